"""The disk nemesis's byte surgery against the real WAL, its parameters and its check.

The property that makes the bit-flip and torn-frame windows meaningful: any single flipped bit
or any cut inside the synced part of the newest segment is refused by `Wal.open` (never cut
as torn, never read back as a different frame), and any cut inside the unsynced tail is
repaired with every synced frame kept."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jepsen_lite import disk

from nokvpy import failpoints
from nokvpy.storage import CorruptLogError, StorageFailedError
from nokvpy.storage.wal import Wal

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _no_failpoints():
    failpoints.clear_all()
    yield
    failpoints.clear_all()


async def _write(directory, synced: list[bytes], unsynced: list[bytes] = ()) -> None:
    wal, _ = Wal.open(directory)
    await wal.append(list(synced))
    if unsynced:
        failpoints.set("storage.wal_before_sync", "raise")
        with pytest.raises(StorageFailedError):
            await wal.append(list(unsynced))
        failpoints.clear("storage.wal_before_sync")
    wal.close()


def _payloads(frames):
    return [p for _, p in frames]


SYNCED = [b"entry-%d" % i * (i + 1) for i in range(6)]


async def test_the_synced_mark_names_the_segment_and_its_synced_bytes(tmp_path):
    await _write(tmp_path, SYNCED, [b"never-synced" * 5])
    segment, synced = disk.synced_mark(tmp_path)
    assert segment.exists() and 0 < synced < segment.stat().st_size
    (tmp_path / disk.MARK_FILE).write_bytes(b"\0" * 20)  # a damaged mark is no mark
    assert disk.synced_mark(tmp_path) is None


@SETTINGS
@given(data=st.data())
async def test_any_flipped_bit_in_the_synced_part_is_refused(tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("wal")
    await _write(directory, SYNCED, [b"tail"])
    segment, synced = disk.synced_mark(directory)
    before = segment.read_bytes()
    offset = data.draw(st.integers(0, synced - 1), label="offset")
    bit = data.draw(st.integers(0, 7), label="bit")
    disk.flip_bit(segment, offset, bit)
    with pytest.raises(CorruptLogError):
        Wal.open(directory)
    disk.flip_bit(segment, offset, bit)  # the repair the nemesis makes
    assert segment.read_bytes() == before
    wal, frames = Wal.open(directory)
    wal.close()
    assert _payloads(frames)[: len(SYNCED)] == SYNCED


async def test_flips_are_aimed_inside_synced_frames(tmp_path):
    await _write(tmp_path, SYNCED, [b"tail" * 9])
    segment, synced = disk.synced_mark(tmp_path)
    data = segment.read_bytes()
    found = disk.frames(data, synced)
    assert [data[o:o + n] for o, n in found] == SYNCED  # the frame walk matches the WAL's
    rng = random.Random(7)
    for _ in range(200):
        offset, bit, where = disk.choose_flip(data, synced, rng)
        assert 0 <= offset < synced and 0 <= bit < 8
        if where == "payload":
            assert any(o <= offset < o + n for o, n in found)


@SETTINGS
@given(data=st.data())
async def test_a_cut_is_repaired_in_the_unsynced_tail_and_refused_in_the_synced_part(
        tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("wal")
    await _write(directory, SYNCED, [b"unsynced-a" * 7, b"unsynced-b" * 3])
    segment, synced = disk.synced_mark(directory)
    size = segment.stat().st_size
    at = data.draw(st.integers(0, size - 1), label="cut at")
    tail = disk.cut(segment, at)
    if at < synced:
        with pytest.raises(CorruptLogError, match="shorter than"):
            Wal.open(directory)
        disk.put_back(segment, tail)
        assert segment.stat().st_size == size
    wal, frames = Wal.open(directory)
    wal.close()
    assert _payloads(frames)[: len(SYNCED)] == SYNCED


def test_params_are_seeded_and_target_stores_or_metaroot_peers():
    by_kind = {"store": ["store-1", "store-2", "store-3"], "metaroot": ["metaroot-1"],
               "coordinator": ["coordinator-1"]}
    for fault in disk.DISK_FAULTS:
        a = [disk.disk_params(fault, random.Random(s), by_kind) for s in range(20)]
        b = [disk.disk_params(fault, random.Random(s), by_kind) for s in range(20)]
        assert a == b
        targets = {t for t, _ in a}
        if fault == "power-loss":
            assert targets == {"all"}
        elif fault in ("disk-full", "eio"):
            assert targets <= {"store-1", "store-2", "store-3", "metaroot-1"}
            for target, params in a:
                fp = params["failpoint"]
                assert fp in failpoints.KNOWN
                assert (fp == "storage.before_commit") == target.startswith("metaroot")
                failpoints.parse(params["spec"])
        else:
            assert targets <= {"store-1", "store-2", "store-3"}


def _stop(fault: str, **value) -> dict:
    return {"type": "info", "process": "nemesis", "f": "stop",
            "value": {"fault": fault, "target": "store-1", **value}}


def test_the_check_fails_a_window_that_ended_outside_the_documented_outcomes():
    good = [_stop("bit-flip", outcome="refused, recovered once repaired", valid=True),
            _stop("eio", outcome="fail-stop, recovered", valid=True),
            {"type": "info", "process": "nemesis", "f": "stop", "value": {"fault": "kill"}}]
    check = disk.check_history(good)
    assert check["valid"] is True and check["windows"] == 2
    bad = [*good, _stop("bit-flip", outcome="started on damaged durable data", valid=False)]
    check = disk.check_history(bad)
    assert check["valid"] is False
    assert check["violations"][0]["outcome"] == "started on damaged durable data"
    assert disk.check_history([])["valid"] == "unknown"


class FakeStoreControl:
    """One store whose WAL is real: a start reads it like the store does (Wal.open) and either
    serves or exits with the store's refusal line in its log, as `raftstore.main` does."""

    def __init__(self, root):
        self.root = root
        self.running = False
        self.held = False
        self.starts = 0
        (root / "logs").mkdir()

    def data_dir(self, name):
        return self.root / "data"

    def log_path(self, name):
        return self.root / "logs" / f"{name}.log"

    def alive(self, name):
        return self.running

    async def kill(self, name):
        self.running = False
        return {"pid": 1, "action": "SIGKILL"}

    def hold(self, name):
        self.held = True

    def release(self, name):
        self.held = False

    async def start(self, name, extra_env=None, force=False):
        assert force or not self.held, "a held store started without force"
        self.starts += 1
        try:
            wal, _ = Wal.open(self.root / "data" / disk.WAL_DIR)
            wal.close()
            self.running = True
        except CorruptLogError as exc:
            with open(self.log_path(name), "a") as f:
                f.write(f"nokv store: store 1 refuses to start: its raft log is corrupt: {exc}\n")
            self.running = False
        return {"pid": self.starts, "action": "restarted"}

    async def ping(self, name, timeout=1.0):
        return self.running

    async def clear_failpoint(self, name, failpoint):
        return {"process": "down"} if not self.running else {"hits": 1}


@pytest.mark.parametrize("seed", range(6))
async def test_bit_flip_and_synced_cuts_are_refused_then_repaired(tmp_path, autojump_clock, seed):
    control = FakeStoreControl(tmp_path)
    await _write(tmp_path / "data" / disk.WAL_DIR, SYNCED, [b"unsynced"])
    before = disk.synced_mark(tmp_path / "data" / disk.WAL_DIR)[0].read_bytes()
    out = await disk.heal(control, "bit-flip", "store-1", {"seed": seed})
    assert out["valid"] is True and out["outcome"] == "refused, recovered once repaired", out
    assert "corrupt" in " ".join(out["refusal"]["log"])
    out = await disk.heal(control, "torn-frame", "store-1",
                          {"failpoint": disk.BEFORE_SYNC, "seed": seed, "where": "synced"})
    assert out["valid"] is True and out["outcome"] == "refused, recovered once repaired", out
    segment = disk.synced_mark(tmp_path / "data" / disk.WAL_DIR)[0]
    assert segment.read_bytes().startswith(before[: out["synced"]])  # repaired, nothing lost


async def test_a_store_that_starts_on_damaged_data_is_judged_invalid(
        tmp_path, autojump_clock, monkeypatch):
    from nokvpy.storage import wal as wal_module

    control = FakeStoreControl(tmp_path)
    await _write(tmp_path / "data" / disk.WAL_DIR, SYNCED)
    monkeypatch.setattr(wal_module, "UNSAFE_SKIP_CHECKSUM", True)  # the broken build
    monkeypatch.setattr(disk, "choose_flip",  # a payload byte: only the checksum can tell
                        lambda data, synced, rng: (synced - 1, 0, "payload"))
    out = await disk.heal(control, "bit-flip", "store-1", {"seed": 1})
    assert out["valid"] is False and out["outcome"] == "started on damaged durable data"
    assert disk.check_history([{"process": "nemesis", "f": "stop",
                                "value": {"fault": "bit-flip", **out}}])["valid"] is False


async def test_a_held_process_is_started_only_by_the_fault_that_holds_it(tmp_path):
    """While a disk fault edits a store's files, the run's heal or a churn restart must not
    start it (found by a soak: a restart raced the bit-flip surgery)."""
    from jepsen_lite.control import ClusterControl

    control = ClusterControl(tmp_path / "c")
    control.create()
    control.hold("store-1")
    assert (await control.start("store-1"))["action"] == "held down by a disk fault"
    assert not control.alive("store-1")
    control.release("store-1")
