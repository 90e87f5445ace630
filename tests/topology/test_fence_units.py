"""Fence, then compensate, at apply time (issue 22 item 1): a compensating fence stamps the
region descriptor's revision on every replica; a forward step (split, prepare / commit merge)
of a plan rooted at or before the stamp then applies as a no-op reported as refused
("fenced"); a barrier fence (drive forward) and the NOKV_UNSAFE_COMPENSATION switch stamp
nothing. Pure apply handlers over a fake store: no processes."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from nokvpy.protocol import PeerMeta, RegionDescriptor, RegionEpoch, RegionState
from nokvpy.protocol.raftstore_cmds import AdminCommand, MergePayload, SplitPayload
from nokvpy.raft.types import Entry
from nokvpy.storage import WriteBatch
from raftstore.execution import ExecutionTracker
from raftstore.topology.apply import ApplyHandlers
from raftstore.topology.compensation import UNSAFE_ENV, fence_refuses
from raftstore.topology.lifecycle import Lifecycle

PEERS = (PeerMeta(1, 11), PeerMeta(2, 12), PeerMeta(3, 13))
BASE = RegionDescriptor(7, b"a", b"z", RegionEpoch(3, 2), PEERS, revision=20)
PLAN = 30  # the plan's root index (its instance)
TID = "split:7:6d"


class _Store:
    store_id = 1

    def __init__(self):
        self.counters: Counter[str] = Counter()
        self.peers: dict = {}
        self.tombstones: set = set()


class _Rt:
    def __init__(self):
        self.store = _Store()
        self.lifecycle = Lifecycle(ExecutionTracker())


class _Sm:
    region_id = 7

    def __init__(self, desc):
        self.descriptor = desc
        self.staged_descriptor = None


def handlers():
    rt = _Rt()
    rt.lifecycle.track(TID, 7, "split")
    return rt, ApplyHandlers(rt)


def fence(h, sm, stamp, index=40):
    batch = WriteBatch()
    res = h.apply_fence(sm, batch, Entry(2, index), AdminCommand(
        "fence", 7, sm.descriptor.epoch, TID, stamp))
    assert res.ok and res.current == str(index).encode()
    return batch


def split_cmd(instance):
    v = RegionEpoch(4, 2)
    left = replace(BASE, end_key=b"m", epoch=v, revision=instance)
    right = RegionDescriptor(8, b"m", b"z", v, PEERS, revision=instance)
    return AdminCommand("split", 7, BASE.epoch, TID, SplitPayload(b"m", left, right, BASE, 1))


def commit(batch):
    for cb in batch.callbacks:
        cb()


def test_compensating_fence_stamps_the_descriptor_and_refuses_the_late_split():
    rt, h = handlers()
    sm = _Sm(BASE)
    fence(h, sm, PLAN + 2)
    assert sm.staged_descriptor.same_truth(BASE)  # range, epoch and peers untouched
    assert sm.staged_descriptor.revision == PLAN + 2
    sm.descriptor, sm.staged_descriptor = sm.staged_descriptor, None
    batch = WriteBatch()
    res = h.apply_split(sm, batch, Entry(2, 41), split_cmd(PLAN))
    assert not res.ok and res.error == "fenced"
    assert sm.staged_descriptor is None and not batch.ops  # a no-op: nothing staged
    commit(batch)
    assert rt.store.counters["fenced_applies_refused"] == 1
    assert "refused at apply" in rt.lifecycle.get(TID).history[-1][2]


def test_fence_in_the_same_batch_refuses_a_later_entry():
    _, h = handlers()
    sm = _Sm(BASE)
    batch = fence(h, sm, PLAN)  # staged only: the next entry of the batch sees it
    assert not h.apply_split(sm, batch, Entry(2, 41), split_cmd(PLAN)).ok


def test_fence_refuses_merge_steps():
    _, h = handlers()
    src = RegionDescriptor(8, b"z", b"", RegionEpoch(3, 2), PEERS, revision=21)
    merged = RegionDescriptor(7, b"a", b"", RegionEpoch(4, 2), PEERS, revision=PLAN)
    payload = MergePayload(BASE, src, merged, 7, 8, 1)
    for sm_desc, op in ((src, "prepare_merge"), (BASE, "commit_merge")):
        sm = _Sm(sm_desc)
        fence(h, sm, PLAN)
        sm.descriptor, sm.staged_descriptor = sm.staged_descriptor, None
        fn = h.apply_prepare_merge if op == "prepare_merge" else h.apply_commit_merge
        res = fn(sm, WriteBatch(), Entry(2, 41), AdminCommand(op, sm_desc.region_id,
                                                              sm_desc.epoch, "merge:7:8",
                                                              payload))
        assert res.error == "fenced", op
        assert sm.staged_descriptor is None
        assert sm.descriptor.state == RegionState.RUNNING


def test_barrier_fence_and_older_stamps_change_nothing():
    _, h = handlers()
    sm = _Sm(BASE)
    fence(h, sm, None)  # drive forward's barrier
    assert sm.staged_descriptor is None
    fence(h, sm, BASE.revision - 5)  # never lowers a revision
    assert sm.staged_descriptor is None


def test_fence_rule_is_per_plan_instance():
    stamped = replace(BASE, revision=PLAN)
    assert fence_refuses(stamped, PLAN) and fence_refuses(stamped, PLAN - 3)
    assert not fence_refuses(stamped, PLAN + 1)  # a re-plan after the cancel is newer
    assert not fence_refuses(BASE, PLAN)  # unfenced: the base is older than the plan
    assert not fence_refuses(stamped, 0)  # a step without an instance is never refused


def test_unsafe_switch_restores_the_fence_that_records_nothing(monkeypatch):
    monkeypatch.setenv(UNSAFE_ENV, "1")
    _, h = handlers()
    sm = _Sm(BASE)
    fence(h, sm, PLAN)
    assert sm.staged_descriptor is None
    assert not fence_refuses(replace(BASE, revision=PLAN), PLAN)


@pytest.mark.parametrize("stamp", ["30", -1, 0, True])
def test_bad_stamps_stamp_nothing(stamp):
    _, h = handlers()
    sm = _Sm(BASE)
    fence(h, sm, stamp)
    assert sm.staged_descriptor is None
