"""Pure pieces of the topology runtime: lifecycle moves, publish backoff and error classes,
descriptor arithmetic of membership changes, the leader-side "did it apply" rule, and the
scheduler's decisions from observed epochs."""

from __future__ import annotations

import random

import pytest

from coordinator.scheduler import SchedulerConfig, target_applied
from nokvpy.protocol import (
    PeerChange,
    PeerMeta,
    RangeMerge,
    RangeSplit,
    RegionDescriptor,
    RegionEpoch,
    TopologyStage,
    TransitionKind,
)
from nokvpy.protocol.raftstore_cmds import PeerChangePayload
from nokvpy.raft import ConfChangeType
from nokvpy.rpc import RemoteError, RpcError
from raftstore.execution import ExecutionTracker
from raftstore.topology.apply import apply_peer_change
from raftstore.topology.compensation import applied_locally
from raftstore.topology.lifecycle import Lifecycle
from raftstore.topology.outbox import PermanentPublishError, backoff_delay, is_permanent

S = TopologyStage
PEERS = (PeerMeta(1, 11), PeerMeta(2, 12), PeerMeta(3, 13))
BASE = RegionDescriptor(7, b"a", b"z", RegionEpoch(3, 2), PEERS)


def test_lifecycle_is_forward_only_with_failed_publish_loop():
    lc = Lifecycle(ExecutionTracker())
    lc.track("t", 7, "split")
    for stage in (S.PLANNED_PUBLISHED, S.EXECUTING, S.APPLIED, S.TERMINAL_PENDING,
                  S.TERMINAL_FAILED, S.TERMINAL_PENDING, S.TERMINAL_FAILED):
        assert lc.move("t", stage)
    assert not lc.move("t", S.EXECUTING)  # no regression
    assert not lc.move("t", S.COMPENSATED)  # applied here: cannot be compensated
    assert lc.move("t", S.TERMINAL_PUBLISHED)
    assert not lc.move("t", S.TERMINAL_FAILED)  # settled
    rec = lc.get("t")
    assert rec.publish_state.name == "PUBLISHED"
    assert [h[1] for h in rec.history][-2:] == ["TERMINAL_FAILED", "TERMINAL_PUBLISHED"]
    assert lc.regressions_ignored == 3


def test_lifecycle_compensation_only_before_apply():
    lc = Lifecycle(ExecutionTracker())
    lc.track("t", 7, "split")
    lc.move("t", S.PLANNED_PUBLISHED)
    assert lc.move("t", S.COMPENSATION_FAILED)
    assert lc.move("t", S.TERMINAL_PUBLISHED)  # reconciled forward
    lc.track("u", 7, "split")
    assert lc.move("u", S.COMPENSATED)
    assert lc.get("u").publish_state.name == "PUBLISHED"


def test_publish_backoff_and_permanence():
    rng = random.Random(1)
    delays = [backoff_delay(n, rng) for n in range(1, 10)]
    assert 0.16 <= delays[0] <= 0.24
    assert all(4.0 <= d <= 6.0 for d in delays[6:])
    assert is_permanent(PermanentPublishError("x"))
    assert is_permanent(RemoteError("rejected", "superseded_before_apply", "",
                                    {"retry_class": "PERMANENT"}))
    assert is_permanent(RemoteError("invalid_argument", "bad"))
    assert not is_permanent(RemoteError("unavailable", "catalog_behind", "",
                                        {"retry_class": "RETRY"}))
    assert not is_permanent(RemoteError("conflict", "pending_conflict", "",
                                        {"retry_class": "CONFLICT"}))
    assert not is_permanent(RpcError("down"))


def test_membership_descriptor_arithmetic():
    target = RegionDescriptor(7, b"a", b"z", RegionEpoch(3, 3), PEERS + (PeerMeta(4, 14),),
                              revision=40)
    p = PeerChangePayload("add_learner", 4, 14, BASE, target)
    learner = apply_peer_change(BASE, ConfChangeType.ADD_LEARNER, p)
    assert learner.epoch == BASE.epoch and learner.peers[-1] == PeerMeta(4, 14, True)
    promoted = apply_peer_change(learner, ConfChangeType.ADD_NODE, PeerChangePayload(
        "promote", 4, 14, BASE, target))
    assert promoted.same_truth(target) and promoted.revision == 40
    undone = apply_peer_change(learner, ConfChangeType.REMOVE_NODE, PeerChangePayload(
        "remove_learner", 4, 14, BASE, target))
    assert undone.same_truth(BASE)
    removed = apply_peer_change(BASE, ConfChangeType.REMOVE_NODE, PeerChangePayload(
        "remove", 1, 11, BASE, target))
    assert removed.epoch == RegionEpoch(3, 3) and removed.peer_on(1) is None


class _Pending:
    def __init__(self, kind, payload):
        self.kind, self.payload = kind, payload


def test_leader_decides_applied_from_its_own_descriptor():
    left = RegionDescriptor(7, b"a", b"m", RegionEpoch(4, 2), PEERS)
    right = RegionDescriptor(9, b"m", b"z", RegionEpoch(4, 2), PEERS)
    split = _Pending(TransitionKind.SPLIT, RangeSplit(7, b"m", left, right, BASE))
    assert not applied_locally(split, BASE)
    assert applied_locally(split, left)
    merged = RegionDescriptor(7, b"a", b"~", RegionEpoch(5, 2), PEERS)
    src = RegionDescriptor(9, b"z", b"~", RegionEpoch(2, 2), PEERS)
    merge = _Pending(TransitionKind.MERGE, RangeMerge(7, 9, merged, BASE, src))
    assert not applied_locally(merge, BASE) and applied_locally(merge, merged)
    target = RegionDescriptor(7, b"a", b"z", RegionEpoch(3, 3), PEERS + (PeerMeta(4, 14),))
    add = _Pending(TransitionKind.PEER_ADDITION, PeerChange(7, 4, 14, target, BASE))
    learner = RegionDescriptor(7, b"a", b"z", RegionEpoch(3, 2),
                               PEERS + (PeerMeta(4, 14, True),))
    assert not applied_locally(add, BASE) and not applied_locally(add, learner)
    assert applied_locally(add, target)


def test_scheduler_reads_applied_from_the_leader_epoch():
    left = RegionDescriptor(7, b"a", b"m", RegionEpoch(4, 2), PEERS)
    right = RegionDescriptor(9, b"m", b"z", RegionEpoch(4, 2), PEERS)
    assert not target_applied(TransitionKind.SPLIT, (left, right), 7, RegionEpoch(3, 2))
    assert target_applied(TransitionKind.SPLIT, (left, right), 7, RegionEpoch(4, 2))
    t = RegionDescriptor(7, b"a", b"z", RegionEpoch(3, 3), PEERS)
    assert not target_applied(TransitionKind.PEER_ADDITION, (t,), 7, RegionEpoch(3, 2))
    assert target_applied(TransitionKind.PEER_REMOVAL, (t,), 7, RegionEpoch(3, 3))


def test_scheduler_config_parse():
    cfg = SchedulerConfig.parse("split_keys=1000, repair-after=2.5")
    assert cfg.split_keys == 1000 and cfg.repair_after == 2.5 and cfg.merge_keys == 0
    with pytest.raises(ValueError):
        SchedulerConfig.parse("bogus=1")
