"""The jepsen-lite ``watch`` workload: its checker on hand-made and generated histories, the
watchers against an in-memory store, and (slow tier) one run on a real cluster under kill,
pause, lease windows and topology churn (splits, merges, leader transfers, re-adds)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jepsen_lite.history import History, Recorder
from jepsen_lite.watchcheck import check_watch, load_records, watch_lines
from jepsen_lite.watchload import WatchWorkload
from jepsen_lite.workloads import WORKLOADS, make_workload, run_worker

from nokvpy.client import WatchCompactedError
from nokvpy.client.watch import WatchEvent, WatchSegment

# -- hand-made histories --------------------------------------------------------------------


def history(*writes: tuple) -> list[dict]:
    """Events of writes ``(key, value, call, ret, status[, applied_index])``; status ok, info
    (``ret`` is then when the client gave up), fail or pending (no completion)."""
    raw = []
    for n, w in enumerate(writes):
        key, value, call, ret, status = w[:5]
        common = {"process": n, "f": "write", "key": key, "value": value}
        raw.append((call, 1, {"type": "invoke", **common}))
        if status != "pending":
            extra = {"applied_index": w[5]} if len(w) > 5 and status == "ok" else {}
            raw.append((ret, 0, {"type": status, **common, **extra}))
    raw.sort(key=lambda item: (item[0], item[1]))
    return [{"index": i, **e, "time": t} for i, (t, _, e) in enumerate(raw)]


def ev(watcher, key, value, index, version=1, seq=0, kind="put") -> dict:
    return {"type": "event", "watcher": watcher, "kind": kind, "key": key, "value": value,
            "region_id": 1, "version": version, "index": index, "seq": seq}


def watcher(w, events, prefix="p/", outcome="complete", opening=0, opened=1) -> list[dict]:
    return ([{"type": "open", "watcher": w, "prefix": prefix, "opening": opening,
              "opened": opened}] + events + [{"type": "end", "watcher": w, "outcome": outcome}])


# p/a: 1 (ok, index 10), 2 (ok, index 20), 3 (ok, index 30), marker 9 (ok, index 40)
BASE = [("p/a", 1, 10, 20, "ok", 10), ("p/a", 2, 30, 40, "ok", 20),
        ("p/a", 3, 50, 60, "ok", 30), ("p/a", 9, 100, 110, "ok", 40)]
GOOD = [("p/a", 1, 10), ("p/a", 2, 20), ("p/a", 3, 30), ("p/a", 9, 40)]


def events_of(w, seq) -> list[dict]:
    return [ev(w, k, v, i) for k, v, i in seq]


def kinds(result) -> set[str]:
    return {v["kind"] for v in result["violations"]}


def test_valid_two_watchers():
    records = watcher(0, events_of(0, GOOD)) + watcher(1, events_of(1, GOOD))
    result = check_watch(history(*BASE), records)
    assert result["valid"] is True, result["violations"]
    assert result["outcomes"] == {"complete": 2}
    assert result["acknowledged_writes"] == 4 and result["events"] == 8
    assert watch_lines(result)[0].startswith("watch: 2 watchers on 1 prefixes, 8 events")


def test_a_lost_acknowledged_write():
    seq = [GOOD[0], GOOD[2], GOOD[3]]
    result = check_watch(history(*BASE), watcher(0, events_of(0, seq)))
    assert result["valid"] is False
    lost = [v for v in result["violations"] if v["kind"] == "lost"]
    assert [v["value"] for v in lost] == [2]
    assert result["watchers"]["0"]["lost"] == 1


def test_lost_even_when_the_watcher_ended_early():
    """A compacted watcher that saw 3 (invoked after 2 was acknowledged) owed us 2."""
    seq = [GOOD[0], GOOD[2]]
    result = check_watch(history(*BASE), watcher(0, events_of(0, seq), outcome="compacted"))
    assert kinds(result) == {"lost", "compacted"}


def test_a_duplicate():
    seq = [GOOD[0], GOOD[1], GOOD[1], GOOD[2], GOOD[3]]
    result = check_watch(history(*BASE), watcher(0, events_of(0, seq)))
    assert kinds(result) == {"duplicate"}


def test_the_same_value_at_a_new_revision_is_a_duplicate():
    seq = [GOOD[0], GOOD[1], ("p/a", 2, 25), GOOD[3]]
    result = check_watch(history(*BASE), watcher(0, events_of(0, seq)))
    assert "duplicate" in kinds(result)


def test_out_of_order():
    seq = [GOOD[1], GOOD[0], GOOD[2], GOOD[3]]
    result = check_watch(history(*BASE), watcher(0, events_of(0, seq)))
    assert {"out_of_order", "realtime_order"} <= kinds(result)


def test_revisions_in_order_but_against_real_time():
    """The store numbered them in this order, but 1 was acknowledged before 2 was invoked."""
    seq = [("p/a", 2, 10), ("p/a", 1, 11), ("p/a", 3, 12), ("p/a", 9, 20)]
    writes = [(k, v, c, r, s) for k, v, c, r, s, _ in BASE]  # no applied index to compare
    result = check_watch(history(*writes), watcher(0, events_of(0, seq)))
    assert kinds(result) == {"realtime_order"}


def test_a_phantom_value():
    seq = GOOD[:2] + [("p/a", 77, 25)] + GOOD[2:]
    result = check_watch(history(*BASE), watcher(0, events_of(0, seq)))
    assert kinds(result) == {"phantom"}


def test_a_delete_is_not_a_put():
    records = watcher(0, events_of(0, GOOD) + [ev(0, "p/a", None, 30, kind="delete")])
    assert kinds(check_watch(history(*BASE), records)) == {"not_a_put"}


@pytest.mark.parametrize("status", ["info", "pending"])
@pytest.mark.parametrize("present", [True, False])
def test_a_write_of_unknown_outcome_may_be_present_or_absent(status, present):
    writes = BASE[:2] + [("p/a", 5, 42, 90, status)] + BASE[2:]
    seq = GOOD[:2] + ([("p/a", 5, 115)] if present else []) + GOOD[2:]
    seq = sorted(seq, key=lambda x: x[2])
    # it may even apply after the marker (still in flight when the client gave up)
    result = check_watch(history(*writes), watcher(0, events_of(0, seq)))
    assert result["valid"] is True, result["violations"]
    assert result["unknown_writes"] == 1 and result["unknown_seen"] == int(present)


def test_a_failed_write_must_not_be_seen():
    writes = BASE[:2] + [("p/a", 5, 42, 45, "fail")] + BASE[2:]
    seq = GOOD[:2] + [("p/a", 5, 115)] + GOOD[2:]
    seq = sorted(seq, key=lambda x: x[2])
    assert kinds(check_watch(history(*writes), watcher(0, events_of(0, seq)))) == {
        "failed_write_seen"}


def test_two_watchers_disagreeing():
    """Both orders are possible for two concurrent writes, but not both at once."""
    writes = [("p/a", 1, 10, 50, "ok"), ("p/a", 2, 12, 48, "ok"), ("p/a", 9, 100, 110, "ok")]
    a = [("p/a", 1, 10), ("p/a", 2, 11), ("p/a", 9, 20)]
    b = [("p/a", 2, 10), ("p/a", 1, 11), ("p/a", 9, 20)]
    assert check_watch(history(*writes), watcher(0, events_of(0, a)))["valid"] is True
    assert check_watch(history(*writes), watcher(1, events_of(1, b)))["valid"] is True
    result = check_watch(history(*writes), watcher(0, events_of(0, a)) +
                         watcher(1, events_of(1, b)))
    assert kinds(result) == {"disagree"}
    (v,) = result["violations"]
    assert v["position"] == 0 and v["key"] == "p/a"


def test_an_unknown_write_seen_by_one_watcher_only_disagrees():
    writes = BASE[:2] + [("p/a", 5, 42, 90, "info")] + BASE[2:]
    with_5 = GOOD[:2] + [("p/a", 5, 25)] + GOOD[2:]
    result = check_watch(history(*writes), watcher(0, events_of(0, with_5)) +
                         watcher(1, events_of(1, GOOD)))
    assert kinds(result) == {"disagree"}


def test_a_watcher_that_stopped_early_agrees_on_its_prefix():
    records = watcher(0, events_of(0, GOOD)) + watcher(1, events_of(1, GOOD[:2]),
                                                       outcome="deadline")
    assert kinds(check_watch(history(*BASE), records)) == {"deadline"}


def test_compacted_is_its_own_outcome():
    records = watcher(0, events_of(0, GOOD[:2]), outcome="compacted")
    result = check_watch(history(*BASE), records)
    assert kinds(result) == {"compacted"} and result["outcomes"] == {"compacted": 1}
    expected = [{"type": "config", "expect_compacted": True}] + records
    assert check_watch(history(*BASE), expected)["valid"] is True


def test_an_aborted_or_markerless_run_is_unknown():
    for outcome in ("aborted", "no_marker"):
        records = watcher(0, events_of(0, GOOD[:2]), outcome=outcome)
        assert check_watch(history(*BASE), records)["valid"] == "unknown"


def test_index_mismatch_and_seen_before_open():
    seq = [("p/a", 1, 10), ("p/a", 2, 99), ("p/a", 3, 120), ("p/a", 9, 130)]
    writes = [(k, v, c, r, s, i) for (k, v, c, r, s, i) in BASE]
    result = check_watch(history(*writes), watcher(0, events_of(0, seq)))
    assert kinds(result) == {"index_mismatch"}
    late = watcher(0, events_of(0, GOOD), opening=25, opened=26)  # 1 was acked at 20
    assert kinds(check_watch(history(*BASE), late)) == {"seen_before_open"}


def test_keys_and_prefixes_are_separate():
    writes = BASE + [("q/a", 5, 10, 20, "ok"), ("q/a", 6, 100, 110, "ok")]
    q = [("q/a", 5, 3), ("q/a", 6, 4)]
    records = (watcher(0, events_of(0, GOOD)) +
               watcher(1, events_of(1, q), prefix="q/") + watcher(2, events_of(2, q[1:]),
                                                              prefix="q/"))
    result = check_watch(history(*writes), records)
    assert kinds(result) == {"lost", "disagree"}  # watcher 2 lacks 5, watcher 1 has it
    assert {v.get("watcher") for v in result["violations"] if v["kind"] == "lost"} == {2}


def test_an_event_outside_the_prefix():
    writes = BASE + [("q/a", 5, 10, 20, "ok")]
    records = watcher(0, events_of(0, GOOD[:2] + [("q/a", 5, 25)] + GOOD[2:]))
    result = check_watch(history(*writes), records)
    assert kinds(result) == {"outside_prefix"}


def test_a_repaired_token_is_a_violation(tmp_path):
    wl = make_workload("watch", keys=2, watchers=2, repair_tokens=1)
    session = wl.session(lambda i: None, Recorder(), tmp_path, lambda msg: None)
    session._file = open(tmp_path / "watch-events.jsonl", "w")  # noqa: SIM115
    w1 = session.watchers[1]  # prefix w1/
    token = [WatchSegment(b"w0/01", b"w10", 1, 6), WatchSegment(b"w1/", b"w0/01", 2, 7)]
    assert session._repair(w1, token) == [WatchSegment(b"w1/", b"w10", 1, 6)]
    assert session._repair(w1, [WatchSegment(b"w1/", b"w10", 1, 6)]) == [
        WatchSegment(b"w1/", b"w10", 1, 6)]  # nothing to repair: no record
    session._file.close()
    records = watcher(1, [], prefix="w1/") + load_records(tmp_path / "watch-events.jsonl")
    result = check_watch([], records)
    assert kinds(result) == {"token_repaired"}
    assert result["violations"][0]["token"][0] == ["w0/01", "w10", 1, 6]


# -- generated histories -------------------------------------------------------------------


@st.composite
def runs(draw):
    """Overlapping writes of 3 keys with random outcomes, applied (ok always, info and
    pending maybe) at a random point of their interval; then a marker per key."""
    writes, applied = [], {}
    value = 0
    for key in ("p/a", "p/b", "p/c"):
        t = 0
        for _ in range(draw(st.integers(0, 8))):
            value += 1
            call = t + draw(st.integers(0, 5))
            ret = call + draw(st.integers(1, 30))
            status = draw(st.sampled_from(["ok", "ok", "ok", "info", "fail", "pending"]))
            writes.append((key, value, call, ret, status))
            takes = status == "ok" or status in ("info", "pending") and draw(st.booleans())
            if takes:
                at = draw(st.integers(call, ret if status == "ok" else ret + 200))
                applied.setdefault(key, []).append((at, value))
            t = call + draw(st.integers(0, 10))
        value += 1
        writes.append((key, value, 1000, 1010, "ok"))
        applied.setdefault(key, []).append((1005, value))
    seq = []
    for n, (_, v, key) in enumerate(sorted((at, v, k) for k, xs in applied.items()
                                           for at, v in xs)):
        seq.append((key, v, n + 1))
    return writes, seq


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs(), st.data())
def test_generated_watches_are_valid_and_each_mutation_is_caught(run, data):
    writes, seq = run
    hist = history(*writes)
    records = watcher(0, events_of(0, seq)) + watcher(1, events_of(1, seq))
    result = check_watch(hist, records)
    assert result["valid"] is True, result["violations"]
    acked = {(k, v) for k, v, _, _, s in writes if s == "ok"}
    workload = [i for i, (k, v, _) in enumerate(seq) if (k, v) in acked and v < 1000]
    mutation = data.draw(st.sampled_from(["drop", "duplicate", "phantom", "swap"]))
    mutated = list(seq)
    if mutation == "drop":
        drop = [i for i, (k, v, _) in enumerate(seq) if (k, v) in acked
                and not any(w[0] == k and w[2] == 1000 and w[1] == v for w in writes)]
        if not drop:
            return
        del mutated[data.draw(st.sampled_from(drop))]
        expect = {"lost", "disagree"}
    elif mutation == "duplicate":
        i = data.draw(st.integers(0, len(seq) - 1))
        mutated.insert(i + 1, seq[i])
        expect = {"duplicate", "disagree"}
    elif mutation == "phantom":
        i = data.draw(st.integers(0, len(seq)))
        mutated.insert(i, ("p/a", 10_000, 0))
        expect = {"phantom", "disagree"}
    else:
        pairs = [(i, j) for i in range(len(seq)) for j in range(i + 1, len(seq))
                 if seq[i][0] == seq[j][0]]
        if not pairs or not workload:
            return
        i, j = data.draw(st.sampled_from(pairs))
        mutated[i], mutated[j] = mutated[j], mutated[i]
        expect = {"out_of_order", "disagree"}
    bad = watcher(0, events_of(0, seq)) + watcher(1, events_of(1, mutated))
    result = check_watch(hist, bad)
    assert result["valid"] is False
    assert kinds(result) & expect, (mutation, result["violations"])


# -- the watchers against an in-memory store -----------------------------------------------


FakeEvent = WatchEvent  # the in-memory store hands out the client's own event type


class FakeStore:
    """A linearizable in-memory KV store with one change log; ``compact_at`` makes watches
    whose cursor is below it fail with WatchCompactedError once the log passes it."""

    def __init__(self, compact_at: int | None = None):
        self.data: dict[bytes, bytes] = {}
        self.log: list[FakeEvent] = []
        self.changed = trio.Event()
        self.compact_at = compact_at

    def write(self, key: bytes, value: bytes) -> int:
        self.data[key] = value
        self.log.append(FakeEvent("put", key, value, 1, 1, len(self.log) + 1, 0))
        self.changed.set()
        self.changed = trio.Event()
        return len(self.log)


class FakeWatch:
    def __init__(self, store: FakeStore, start: bytes, end: bytes, pos: int | None):
        self.store, self.start, self.end, self.pos = store, start, end, pos
        self.consumed = pos

    async def __aenter__(self):
        await trio.sleep(0.001)
        if self.pos is None:
            self.pos = self.consumed = len(self.store.log)
        return self

    async def __aexit__(self, *exc):
        return False

    def __aiter__(self):
        return self

    async def __anext__(self) -> FakeEvent:
        store = self.store
        while True:
            if store.compact_at is not None and len(store.log) >= store.compact_at:
                seg = WatchSegment(self.start, self.end, 1, self.pos)
                raise WatchCompactedError("compacted", 1, (1, store.compact_at), seg)
            if self.pos < len(store.log):
                event = store.log[self.pos]
                self.pos += 1
                if self.start <= event.key < self.end:
                    self.consumed = self.pos
                    return event
                continue
            await store.changed.wait()

    def segments(self) -> list[WatchSegment]:
        return [WatchSegment(self.start, self.end, 1, self.consumed)]


class FakeClient:
    def __init__(self, store: FakeStore):
        self.store = store

    async def get(self, key, timeout=None):
        await trio.sleep(0.001)
        return self.store.data.get(key)

    async def put(self, key, value, timeout=None):
        await trio.sleep(0.001)
        return self.store.write(key, value)

    async def compare_and_swap(self, key, expected, new, timeout=None):
        await trio.sleep(0.001)
        current = self.store.data.get(key)
        if current != expected:
            return False, current
        self.store.write(key, new)
        return True, None

    def watch(self, start, end=b"", *, prefix=False, resume=None):
        if resume is not None:
            seg = resume[0]
            return FakeWatch(self.store, seg.start, seg.end, seg.index)
        return FakeWatch(self.store, start, start[:-1] + bytes([start[-1] + 1]), None)

    async def aclose(self):
        pass


async def fake_run(tmp_path: Path, store: FakeStore, **options) -> tuple[History, list, dict]:
    workload = make_workload("watch", keys=2, seed=3, watchers=4, resume_every=0.1,
                             linger=0.05, **options)
    recorder = Recorder()
    async with workload.session(lambda i: FakeClient(store), recorder, tmp_path,
                                lambda msg: None, 0.5) as side:
        until = trio.current_time() + 0.6
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(lambda i=i: run_worker(
                    workload, FakeClient(store), recorder, index=i, concurrency=3,
                    rng=random.Random(i), until=until, rate=0, op_timeout=0.5))
        summary = await side.finish()
    return recorder.history, load_records(tmp_path / "watch-events.jsonl"), summary


async def test_the_watchers_follow_an_in_memory_store(tmp_path):
    assert WORKLOADS["watch"] is WatchWorkload
    hist, records, summary = await fake_run(tmp_path, FakeStore())
    assert summary["outcomes"] == {"complete": 4} and summary["markers"] == 6
    result = check_watch(hist, records)
    assert result["valid"] is True, result["violations"]
    assert result["acknowledged_writes"] > 20
    assert sum(w["resumes"] for w in result["watchers"].values()) >= 2  # odd watchers resume
    watch_ops = [op for op in hist.operations() if op.f == "watch"]
    assert len(watch_ops) == 4 and {op.status for op in watch_ops} == {"ok"}
    assert WatchWorkload.run_checks(hist, tmp_path)["watch"]["valid"] is True


async def test_the_watchers_report_compaction(tmp_path):
    hist, records, summary = await fake_run(tmp_path, FakeStore(compact_at=10),
                                            marker_timeout=1.0)
    assert summary["outcomes"] == {"compacted": 4}
    result = check_watch(hist, records)
    assert kinds(result) == {"compacted"}
    assert [op.status for op in hist.operations() if op.f == "watch"] == ["info"] * 4
    assert WatchWorkload.store_args({"watch_keep": 8}) == ["--watch-keep", "8"]
    assert check_watch(hist, records, expect_compacted=True)["valid"] is True


# -- a real cluster ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.cluster
def test_watch_run_under_kill_pause_lease_and_churn(tmp_path):
    from jepsen_lite.report import summary_text
    from jepsen_lite.runner import RunConfig, run

    config = RunConfig(workload="watch", nemesis=["kill", "pause", "lease", "churn"],
                       time_limit=30, seed=1, dir=str(tmp_path / "run"))
    results = run(config, log=lambda msg: print(msg, flush=True))
    text = summary_text(results)
    print(text)
    assert results["valid"] is True, f"{text}\n{results['reproduce']}"
    watch = results["checks"]["watch"]
    assert watch["outcomes"] == {"complete": 10}
    assert watch["acknowledged_writes"] > 100
    churn = [s for s in results.get("churn_steps", []) if s.get("op") in ("split", "merge")]
    assert churn, "the churn made no split or merge"
