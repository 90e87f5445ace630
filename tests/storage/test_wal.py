"""Wal alone: frames and LSNs across reopen, group commit and unsynced frames, torn-tail repair,
corruption detection, rotation, the failed-fsync rule, and a crash property (hypothesis)."""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nokvpy import failpoints
from nokvpy.storage import CorruptLogError, StorageFailedError
from nokvpy.storage import wal as wal_module
from nokvpy.storage.wal import HEADER_SIZE, MARK_FILE, Wal, encode_frame


@pytest.fixture(autouse=True)
def _no_failpoints():
    failpoints.clear_all()
    yield
    failpoints.clear_all()


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.wal"))


def payloads(frames: list[tuple[int, bytes]]) -> list[bytes]:
    return [p for _, p in frames]


def assert_increasing(frames: list[tuple[int, bytes]]) -> None:
    lsns = [lsn for lsn, _ in frames]
    assert all(a < b for a, b in itertools.pairwise(lsns)), lsns


def reopen(path: Path, **kw) -> tuple[Wal, list[tuple[int, bytes]]]:
    wal, frames = Wal.open(path, **kw)
    assert_increasing(frames)
    return wal, frames


# ---------------------------------------------------------------- round trip, LSNs, group commit


async def test_frames_round_trip_across_reopen_with_increasing_lsns(tmp_path):
    wal, frames = Wal.open(tmp_path)
    assert frames == [] and wal.durable_lsn == 0
    l1 = await wal.append([b"a", b""])  # an empty payload is a frame too
    l2 = await wal.append([b"c" * 5000])
    assert 0 < l1 < l2 == wal.durable_lsn < wal.next_lsn
    assert await wal.append([]) == l2  # nothing new: the last LSN queued so far
    wal.close()

    wal, frames = reopen(tmp_path)
    assert payloads(frames) == [b"a", b"", b"c" * 5000]
    assert frames[1][0] == l1 and frames[2][0] == l2
    assert wal.durable_lsn == l2 and wal.next_lsn > l2
    assert wal.stats.torn_bytes == 0
    l3 = await wal.append([b"d"])
    assert l3 > l2
    wal.close()

    wal, frames = reopen(tmp_path)
    assert payloads(frames) == [b"a", b"", b"c" * 5000, b"d"]
    assert frames[-1][0] == l3
    assert len(segments(tmp_path)) == 1
    size = sum(HEADER_SIZE + len(p) for p in payloads(frames))
    assert segments(tmp_path)[0].stat().st_size == size == wal.size
    wal.close()


async def test_one_fdatasync_per_synced_append_and_concurrent_appends_share_one(tmp_path):
    wal, _ = Wal.open(tmp_path)
    await wal.append([b"x"] * 50)
    assert wal.stats.appends == 1 and wal.stats.frames == 50
    lsns: list[int] = []

    async def one(i: int) -> None:
        lsns.append(await wal.append([b"t%d" % i]))

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(one, i)
    assert len(set(lsns)) == 10
    assert 2 <= wal.stats.appends <= 3  # group commit: the ten appends shared one or two syncs
    assert wal.durable_lsn == max(lsns)
    wal.close()
    _, frames = reopen(tmp_path)
    assert sorted(payloads(frames)[50:]) == sorted(b"t%d" % i for i in range(10))


async def test_closed_wal_refuses_appends(tmp_path):
    wal, _ = Wal.open(tmp_path)
    wal.close()
    with pytest.raises(StorageFailedError):
        await wal.append([b"x"])
    with pytest.raises(StorageFailedError):
        wal.queue(b"x")


# ---------------------------------------------------------------- unsynced frames


async def test_unsynced_frames_are_not_on_disk_until_the_next_synced_append(tmp_path):
    wal, _ = Wal.open(tmp_path)
    await wal.append([b"durable"])
    (seg,) = segments(tmp_path)
    size = seg.stat().st_size
    lsn = await wal.append([b"q1", b"q2"], sync=False)
    assert wal.durable_lsn < lsn
    assert seg.stat().st_size == size  # not even written
    assert wal.stats.appends == 1
    wal.close()  # a crash: the queued frames are lost

    wal, frames = reopen(tmp_path)
    assert payloads(frames) == [b"durable"] and wal.stats.torn_bytes == 0
    await wal.append([b"q1", b"q2"], sync=False)
    last = await wal.append([b"s"])  # writes everything queued before it, in order
    assert wal.durable_lsn == last and wal.stats.appends == 1
    wal.close()

    wal, frames = reopen(tmp_path)
    assert payloads(frames) == [b"durable", b"q1", b"q2", b"s"]
    await wal.append([b"f1"], sync=False)
    await wal.flush()
    await wal.append([b"f2"], sync=False)
    await wal.append([])  # an empty synced append flushes too
    wal.close()

    _, frames = reopen(tmp_path)
    assert payloads(frames) == [b"durable", b"q1", b"q2", b"s", b"f1", b"f2"]


async def test_sync_to_makes_a_queued_frame_durable(tmp_path):
    wal, _ = Wal.open(tmp_path)
    a = wal.queue(b"a")
    b = wal.queue(b"b")
    await wal.sync_to(a)  # everything queued so far is written together
    assert wal.durable_lsn == b
    await wal.sync_to(b)
    assert wal.stats.appends == 1
    wal.close()
    _, frames = reopen(tmp_path)
    assert frames == [(a, b"a"), (b, b"b")]


# ---------------------------------------------------------------- torn tail


def _torn_suffix(kind: str, next_lsn: int) -> bytes:
    frame = encode_frame(next_lsn, b"n" * 100)
    return {
        "partial header": frame[:HEADER_SIZE - 5],
        "header only": frame[:HEADER_SIZE],
        "short payload": frame[:HEADER_SIZE + 40],
        "all but one byte": frame[:-1],
        "garbage": bytes(range(7, 250, 3)),
        "zeros": bytes(4096),
        "bad checksum": frame[:-1] + bytes([frame[-1] ^ 0xFF]),
    }[kind]


@pytest.mark.parametrize("kind", ["partial header", "header only", "short payload",
                                  "all but one byte", "garbage", "zeros", "bad checksum"])
async def test_torn_tail_is_cut_at_open_and_appends_continue(tmp_path, kind):
    wal, _ = Wal.open(tmp_path)
    await wal.append([b"one", b"two" * 30, b"three"])
    next_lsn = wal.next_lsn
    wal.close()
    (seg,) = segments(tmp_path)
    good = seg.stat().st_size
    suffix = _torn_suffix(kind, next_lsn)
    with open(seg, "ab") as f:
        f.write(suffix)

    wal, frames = reopen(tmp_path)
    assert payloads(frames) == [b"one", b"two" * 30, b"three"]
    assert wal.stats.torn_bytes == len(suffix)
    assert seg.stat().st_size == good  # cut on disk, not just skipped
    lsn = await wal.append([b"four"])
    assert lsn > frames[-1][0]
    wal.close()

    wal, frames = reopen(tmp_path)
    assert payloads(frames) == [b"one", b"two" * 30, b"three", b"four"]
    assert wal.stats.torn_bytes == 0
    wal.close()


async def append_unsynced(wal: Wal, items: list[bytes]) -> None:
    """Write `items` to the file but fail their fdatasync: on disk, never synced (what a
    crash between write() and fdatasync leaves, and the only bytes a crash can tear)."""
    failpoints.set("storage.wal_before_sync", "raise")
    with pytest.raises(StorageFailedError):
        await wal.append(items)
    failpoints.clear("storage.wal_before_sync")


@pytest.mark.parametrize("cut", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 7, -1])
async def test_truncated_last_frame_is_cut(tmp_path, cut):
    wal, _ = Wal.open(tmp_path)
    await wal.append([b"a" * 10, b"b" * 20])
    await append_unsynced(wal, [b"c" * 30])
    wal.close()
    (seg,) = segments(tmp_path)
    size = seg.stat().st_size
    keep = size - (HEADER_SIZE + 30) + (cut % (HEADER_SIZE + 30))
    os.truncate(seg, keep)

    wal, frames = reopen(tmp_path)
    assert payloads(frames) == [b"a" * 10, b"b" * 20]
    assert wal.stats.torn_bytes == keep - (size - HEADER_SIZE - 30)
    await wal.append([b"d"])
    wal.close()
    _, frames = reopen(tmp_path)
    assert payloads(frames) == [b"a" * 10, b"b" * 20, b"d"]


# ---------------------------------------------------------------- corruption


async def _three_frames(path: Path) -> tuple[Path, list[tuple[int, bytes]]]:
    wal, _ = Wal.open(path)
    await wal.append([b"first-payload", b"second-payload", b"third-payload"])
    wal.close()
    (seg,) = segments(path)
    _, frames = reopen(path)
    return seg, frames


@pytest.mark.parametrize(
    "offset",
    [
        pytest.param(HEADER_SIZE + 3, id="payload"),
        pytest.param(5, id="crc"),
        pytest.param(15, id="lsn"),
        pytest.param(3, id="length"),  # where the frame ends is itself damaged
    ],
)
async def test_flipped_byte_followed_by_a_valid_frame_raises_and_changes_nothing(tmp_path,
                                                                                  offset):
    seg, _ = await _three_frames(tmp_path)
    data = bytearray(seg.read_bytes())
    data[offset] ^= 0x01  # in the first of three frames
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError):
        Wal.open(tmp_path)
    assert seg.read_bytes() == bytes(data)


@pytest.mark.parametrize("frame", [0, 1])
@pytest.mark.parametrize("byte, bit", [(0, 7), (0, 0), (1, 2), (2, 0), (3, 0), (3, 4)])
async def test_damaged_length_field_is_never_taken_for_a_torn_tail(tmp_path, frame, byte, bit):
    seg, frames = await _three_frames(tmp_path)
    at = frame * HEADER_SIZE + sum(len(p) for p in payloads(frames)[:frame]) + byte
    data = bytearray(seg.read_bytes())
    data[at] ^= 1 << bit
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError):
        Wal.open(tmp_path)
    assert seg.read_bytes() == bytes(data)


async def test_damaged_length_after_an_lsn_jump_is_not_taken_for_a_torn_tail(tmp_path):
    wal, _ = Wal.open(tmp_path)
    await wal.append([b"before the jump"])
    wal.ensure_next_lsn(wal.next_lsn + 100)
    await wal.append([b"first-after", b"second-after", b"third-after"])
    wal.close()
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    data[HEADER_SIZE + len(b"before the jump") + 3] ^= 0x01  # first-after's length
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError):
        Wal.open(tmp_path)  # instead: opens with one frame, 'torn' tail of three cut
    assert seg.read_bytes() == bytes(data)


async def test_ensure_next_lsn_only_raises_the_next_lsn(tmp_path):
    wal, _ = Wal.open(tmp_path)
    await wal.append([b"a"])
    wal.ensure_next_lsn(50)
    assert wal.next_lsn == 50
    wal.ensure_next_lsn(10)
    assert wal.next_lsn == 50
    assert await wal.append([b"b"]) == 50
    wal.close()
    _, frames = reopen(tmp_path)
    assert frames == [(1, b"a"), (50, b"b")]


@pytest.mark.parametrize("mark", ["synced mark", "no mark"])
async def test_flipped_byte_in_the_middle_frame_raises(tmp_path, mark):
    seg, frames = await _three_frames(tmp_path)
    if mark == "no mark":  # a log written before the mark existed: the older rule still holds
        (tmp_path / MARK_FILE).unlink()
    data = bytearray(seg.read_bytes())
    data[2 * HEADER_SIZE + len(frames[0][1]) + 1] ^= 0x80  # second frame's payload
    seg.write_bytes(bytes(data))
    match = "damaged inside the" if mark == "synced mark" else "followed by valid data"
    with pytest.raises(CorruptLogError, match=match):
        Wal.open(tmp_path)
    assert seg.read_bytes() == bytes(data)


async def test_bad_checksum_in_a_synced_last_frame_is_damage_not_a_torn_write(tmp_path):
    """A frame that was fdatasynced cannot be torn by a crash: a bad checksum there is damage
    (cutting it would drop a frame the log had acknowledged), so open refuses."""
    seg, frames = await _three_frames(tmp_path)
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0x01
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match="synced before the last shutdown or crash"):
        Wal.open(tmp_path)
    assert seg.read_bytes() == bytes(data)  # nothing changed on disk


async def test_bad_checksum_in_an_unsynced_last_frame_is_treated_as_torn(tmp_path):
    wal, _ = Wal.open(tmp_path)
    await wal.append([b"first-payload", b"second-payload"])
    await append_unsynced(wal, [b"third-payload"])
    wal.close()
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0x01
    seg.write_bytes(bytes(data))
    wal, got = reopen(tmp_path)
    assert payloads(got) == [b"first-payload", b"second-payload"]
    assert wal.stats.torn_bytes == HEADER_SIZE + len(b"third-payload")
    wal.close()


async def test_a_segment_cut_inside_its_synced_part_is_refused(tmp_path):
    seg, frames = await _three_frames(tmp_path)
    size = seg.stat().st_size
    os.truncate(seg, size - 3)
    with pytest.raises(CorruptLogError, match=f"shorter than the {size} bytes synced"):
        Wal.open(tmp_path)
    assert seg.stat().st_size == size - 3


async def test_lose_unsynced_drops_exactly_what_was_never_fdatasynced(tmp_path):
    crashed = tmp_path / "crashed"
    wal, _ = Wal.open(crashed)
    await wal.append([b"acked-1", b"acked-2"])
    await append_unsynced(wal, [b"written-not-synced"])
    wal.close()
    (seg,) = segments(crashed)
    with_unsynced = seg.stat().st_size
    shutil.copytree(crashed, tmp_path / "power-lost")
    # a restart after a power loss loses the frame that was never fdatasynced
    wal, frames = reopen(tmp_path / "power-lost", lose_unsynced=True)
    assert payloads(frames) == [b"acked-1", b"acked-2"]
    (cut,) = segments(tmp_path / "power-lost")
    assert wal.stats.unsynced_bytes_lost == with_unsynced - cut.stat().st_size > 0
    wal.close()
    # a plain restart (the page cache survived) replays it, and makes it durable before
    # anything acts on it: a power loss after that restart no longer loses it
    wal, frames = reopen(crashed, lose_unsynced=False)
    assert payloads(frames) == [b"acked-1", b"acked-2", b"written-not-synced"]
    wal.close()
    wal, frames = reopen(crashed, lose_unsynced=True)
    assert payloads(frames) == [b"acked-1", b"acked-2", b"written-not-synced"]
    assert wal.stats.unsynced_bytes_lost == 0
    wal.close()


async def test_lose_unsynced_deletes_a_segment_rotation_never_synced(tmp_path):
    (old, new) = await _two_segments(tmp_path)
    assert old.exists() and new.exists()
    # the mark names the newer segment after a rotation: point it back at the older one, as
    # if the process had died before the new segment's fdatasync
    first_old = int(old.name[:-4], 16)
    body = struct.pack(">QQ", first_old, old.stat().st_size)
    (tmp_path / MARK_FILE).write_bytes(body + zlib.crc32(body).to_bytes(4, "big"))
    wal, frames = reopen(tmp_path, lose_unsynced=True)
    assert not new.exists() and old.exists()
    assert wal.stats.unsynced_bytes_lost > 0
    wal.close()


async def test_unsafe_ack_before_sync_is_lost_by_a_power_loss(tmp_path, monkeypatch):
    """The test-only switch the power-loss fault runs must catch: acknowledged frames that
    were never fdatasynced vanish when unsynced writes are lost."""
    wal, _ = Wal.open(tmp_path)
    await wal.append([b"synced"])
    monkeypatch.setattr(wal_module, "UNSAFE_ACK_BEFORE_SYNC", True)
    await wal.append([b"acked-without-fsync"])  # returns: acknowledged
    wal.close()
    _, frames = reopen(tmp_path, lose_unsynced=True)
    assert payloads(frames) == [b"synced"]


async def test_unsafe_skip_checksum_returns_a_damaged_frame(tmp_path, monkeypatch):
    seg, frames = await _three_frames(tmp_path)
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0x01
    seg.write_bytes(bytes(data))
    monkeypatch.setattr(wal_module, "UNSAFE_SKIP_CHECKSUM", True)
    _, got = reopen(tmp_path)
    assert payloads(got)[2] != frames[2][1] and len(got) == 3


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EIO"])
@pytest.mark.parametrize("failpoint", ["storage.wal_write", "storage.wal_before_sync"])
async def test_injected_disk_errors_fail_the_log_for_good(tmp_path, failpoint, errno_name):
    wal, _ = Wal.open(tmp_path)
    await wal.append([b"before"])
    failpoints.set(failpoint, f'1*return("{errno_name}")')
    with pytest.raises(StorageFailedError, match="write/fsync failed"):
        await wal.append([b"during"])
    assert getattr(errno, errno_name) == wal._failed.errno
    with pytest.raises(StorageFailedError, match="refuses appends"):
        await wal.append([b"after"])  # never retried, even once the disk is back
    wal.close()
    _, frames = reopen(tmp_path, lose_unsynced=True)
    assert payloads(frames) == [b"before"]


async def test_lsns_that_do_not_increase_raise(tmp_path):
    seg = tmp_path / f"{1:016x}.wal"
    raw = encode_frame(5, b"a") + encode_frame(5, b"b") + encode_frame(6, b"c")
    seg.write_bytes(raw)
    with pytest.raises(CorruptLogError, match="does not follow"):
        Wal.open(tmp_path)
    assert seg.read_bytes() == raw


async def _two_segments(path: Path) -> tuple[Path, Path]:
    """Old and new segment both on disk: a crash after rotation made the new one durable and
    before it deleted the old one (simulated by restoring the old file)."""
    wal, _ = Wal.open(path)
    await wal.append([b"a", b"b", b"c"])
    (old,) = segments(path)
    saved = old.read_bytes()
    await wal.rotate([b"restated"])
    await wal.append([b"d"])
    wal.close()
    assert segments(path) != [old]
    old.write_bytes(saved)
    first, second = segments(path)
    assert first == old
    return first, second


async def test_old_and_new_segment_after_a_crash_in_rotation_replay_in_order(tmp_path):
    await _two_segments(tmp_path)
    wal, frames = reopen(tmp_path)
    assert payloads(frames) == [b"a", b"b", b"c", b"restated", b"d"]
    assert wal.segment_count == 2
    await wal.rotate([b"again"])
    assert len(segments(tmp_path)) == 1
    wal.close()
    _, frames = reopen(tmp_path)
    assert payloads(frames) == [b"again"]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
async def test_damage_in_an_older_segment_raises(tmp_path, damage):
    old, new = await _two_segments(tmp_path)
    data = old.read_bytes()
    if damage == "truncate":  # would be a torn tail in the newest segment
        data = data[:-2]
    else:
        data = data[:-1] + bytes([data[-1] ^ 0x10])
    old.write_bytes(data)
    new_bytes = new.read_bytes()
    with pytest.raises(CorruptLogError, match="bad frame"):
        Wal.open(tmp_path)
    assert old.read_bytes() == data and new.read_bytes() == new_bytes


# ---------------------------------------------------------------- rotation


async def test_rotation_keeps_only_the_restatement_and_lsns_keep_increasing(tmp_path):
    wal, _ = Wal.open(tmp_path, segment_bytes=256)
    for i in range(20):
        await wal.append([b"%02d" % i * 10])
    assert wal.wants_rotation()
    queued = await wal.append([b"queued"], sync=False)  # written before the restatement
    before = wal.next_lsn
    restatement = [b"R" * 1000, b"S"]
    await wal.rotate(restatement)
    assert wal.stats.rotations == 1 and wal.segment_count == 1
    (seg,) = segments(tmp_path)
    assert wal.durable_lsn >= before > queued
    # Rotation threshold: twice what was restated (more than segment_bytes here).
    restated = sum(HEADER_SIZE + len(p) for p in restatement)
    assert wal.size == restated and not wal.wants_rotation()
    await wal.append([b"x" * (2 * restated - wal.size - HEADER_SIZE - 1)])
    assert wal.size == 2 * restated - 1 and not wal.wants_rotation()
    after = await wal.append([b""])
    assert wal.wants_rotation()
    wal.close()

    wal, frames = reopen(tmp_path)
    assert payloads(frames)[:2] == restatement
    assert frames[0][0] >= before and frames[-1][0] == after
    assert int(seg.stem, 16) == frames[0][0]  # <first lsn>.wal
    assert wal.next_lsn > after
    assert await wal.append([b"y"]) > after
    wal.close()


async def test_small_restatement_rotates_again_at_segment_bytes(tmp_path):
    wal, _ = Wal.open(tmp_path, segment_bytes=200)
    await wal.rotate([b"r"])
    assert not wal.wants_rotation()
    while wal.size < 200:
        assert not wal.wants_rotation()
        await wal.append([b"z" * 20])
    assert wal.wants_rotation()
    wal.close()


async def test_lsns_keep_increasing_after_an_empty_rotation_and_reopen(tmp_path):
    """The empty newest segment's name (its first LSN) is a floor for new LSNs."""
    wal, _ = Wal.open(tmp_path)
    last = await wal.append([b"a", b"b", b"c"])
    await wal.rotate([])
    wal.close()
    wal, frames = reopen(tmp_path)
    assert frames == []
    assert await wal.append([b"d"]) > last
    wal.close()


# ---------------------------------------------------------------- failed fsync


async def test_failed_fsync_refuses_every_later_append(tmp_path):
    wal, _ = Wal.open(tmp_path)
    await wal.append([b"ok"])
    failpoints.set("storage.wal_before_sync", "1*raise")
    with pytest.raises(StorageFailedError):
        await wal.append([b"x"])
    assert failpoints.list_active() == {}  # fired once; the refusals below are the log's own
    with pytest.raises(StorageFailedError):
        await wal.append([b"y"])
    with pytest.raises(StorageFailedError):
        await wal.append([b"y"], sync=False)
    with pytest.raises(StorageFailedError):
        wal.queue(b"z")
    with pytest.raises(StorageFailedError):
        await wal.flush()
    with pytest.raises(StorageFailedError):
        await wal.rotate([b"r"])
    assert wal.durable_lsn == 1
    wal.close()
    _, frames = reopen(tmp_path)  # the failed write itself reached the file (page cache)
    assert payloads(frames) in ([b"ok"], [b"ok", b"x"])


async def test_failed_fsync_during_rotation_refuses_later_appends(tmp_path):
    wal, _ = Wal.open(tmp_path)
    await wal.append([b"ok"])
    await wal.append([b"pending"], sync=False)
    failpoints.set("storage.wal_before_sync", "1*raise")
    with pytest.raises(StorageFailedError):
        await wal.rotate([b"r"])
    with pytest.raises(StorageFailedError):
        await wal.append([b"y"])
    wal.close()
    _, frames = reopen(tmp_path)
    assert payloads(frames)[0] == b"ok" and b"r" not in payloads(frames)


async def test_failure_after_sync_leaves_the_frame_durable(tmp_path):
    wal, _ = Wal.open(tmp_path)
    failpoints.set("storage.wal_after_sync", "1*raise")
    with pytest.raises(failpoints.FailpointError):
        await wal.append([b"durable, not acknowledged"])
    await wal.append([b"next"])  # not a failed fsync: the log keeps working
    wal.close()
    _, frames = reopen(tmp_path)
    assert payloads(frames) == [b"durable, not acknowledged", b"next"]


# ---------------------------------------------------------------- crash property

_counter = itertools.count()
_payload = st.binary(max_size=48)


async def _crash_run(path: Path, data: st.DataObject) -> None:
    seg_bytes = data.draw(st.sampled_from([64, 400, 1 << 20]), label="segment_bytes")
    wal, frames = Wal.open(path, segment_bytes=seg_bytes)
    durable: list[bytes] = []  # what a crash now must replay, in order
    queued: list[tuple[int, bytes]] = []  # queued, not yet written: lost by a crash
    last_lsn = 0
    try:
        for _ in range(data.draw(st.integers(1, 25), label="steps")):
            op = data.draw(st.sampled_from(["append", "append", "nosync", "nosync", "flush",
                                            "rotate", "jump", "crash", "crash"]), label="op")
            if op in ("append", "nosync"):
                ps = data.draw(st.lists(_payload, max_size=4), label="payloads")
                lsn = await wal.append(ps, sync=op == "append")
                if ps:
                    assert lsn > last_lsn
                    last_lsn = lsn
                queued += [(lsn - len(ps) + 1 + i, p) for i, p in enumerate(ps)]
                if op == "append":
                    durable += [p for _, p in queued]
                    queued = []
                    assert wal.durable_lsn == lsn
            elif op == "flush":
                await wal.flush()
                durable += [p for _, p in queued]
                queued = []
            elif op == "jump":  # LSNs may skip numbers (raftlog's ensure_next_lsn)
                wal.ensure_next_lsn(wal.next_lsn + data.draw(st.integers(0, 40), label="jump"))
            elif op == "rotate":
                if not wal.wants_rotation() and data.draw(st.booleans(), label="only if due"):
                    continue
                ps = data.draw(st.lists(_payload, max_size=3), label="restatement")
                before = wal.next_lsn
                await wal.rotate(ps)
                assert len(segments(path)) == 1
                assert wal.next_lsn > before and (not ps or wal.durable_lsn >= before)
                last_lsn = wal.next_lsn - 1
                durable, queued = list(ps), []
            else:
                # Crash: the queued frames never reach the file, except that a torn write
                # may have put a prefix of their bytes (or garbage) at the newest segment's end.
                durable_lsn = wal.durable_lsn
                wal.close()
                torn = data.draw(st.sampled_from(["none", "prefix", "garbage"]), label="torn")
                expect = list(durable)
                tail = b""
                if torn == "prefix" and queued:
                    blob = b"".join(encode_frame(lsn, p) for lsn, p in queued)
                    tail = blob[:data.draw(st.integers(0, len(blob)), label="cut")]
                    off = 0
                    for _, p in queued:  # whole frames in the written prefix are valid frames
                        if off + HEADER_SIZE + len(p) > len(tail):
                            break
                        off += HEADER_SIZE + len(p)
                        expect.append(p)
                    torn_bytes = len(tail) - off
                elif torn == "garbage":
                    tail = data.draw(st.binary(min_size=1, max_size=40), label="garbage")
                    torn_bytes = len(tail)
                else:
                    torn_bytes = 0
                if tail:
                    with open(segments(path)[-1], "ab") as f:
                        f.write(tail)
                wal, frames = Wal.open(path, segment_bytes=seg_bytes)
                assert_increasing(frames)
                assert payloads(frames) == expect
                assert wal.stats.torn_bytes == torn_bytes
                # No LSN of a frame that was (or may have been) durable is handed out again.
                assert wal.next_lsn > max([durable_lsn] + [lsn for lsn, _ in frames])
                last_lsn = wal.next_lsn - 1
                durable, queued = expect, []
        wal.close()
        wal, frames = reopen(path, segment_bytes=seg_bytes)
        assert payloads(frames) == durable
    finally:
        wal.close()


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_crash_replays_exactly_the_durable_prefix(tmp_path, data):
    trio.run(_crash_run, tmp_path / f"wal{next(_counter)}", data)


async def test_inline_sync_moves_to_a_thread_after_a_stall(tmp_path, monkeypatch):
    """With inline_stall, syncs run on the event loop until one is slower than the limit;
    the next ones run in a worker thread (the loop stays responsive on a stalling disk),
    and come back inline after the backoff."""
    wal, _ = Wal.open(tmp_path, inline_stall=0.01)
    threaded: list[bool] = []
    real = trio.to_thread.run_sync

    async def spy(fn, *args, **kwargs):
        threaded.append(True)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", spy)
    await wal.append([b"fast"])
    assert threaded == [] and wal.stats.stalls == 0  # inline
    failpoints.set("storage.wal_before_sync", "1*sleep(30)")
    await wal.append([b"stalled"])
    assert wal.stats.stalls == 1 and threaded == []  # that one was inline, and slow
    await wal.append([b"after"])
    assert threaded == [True]  # moved to the worker thread
    wal._threaded_until = 0.0  # as if the backoff had passed
    await wal.append([b"back"])
    assert threaded == [True]
    wal.close()
    reopened, frames = Wal.open(tmp_path)
    assert [p for _, p in frames] == [b"fast", b"stalled", b"after", b"back"]
    reopened.close()
