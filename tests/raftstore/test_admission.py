"""Admission (DESIGN 5): every reason, its order, and the hints each refusal carries."""

from __future__ import annotations

import pytest

from nokvpy.protocol import (
    AdmissionClass,
    AdmissionReason,
    PeerMeta,
    RegionDescriptor,
    RegionEpoch,
)
from nokvpy.protocol.store_rpc import MAX_KEY_SIZE, MAX_VALUE_SIZE, KvContext, ReadMode
from raftstore.admission import AdmissionRequest, Limits, RegionView, admit

R = AdmissionReason
READ, WRITE, TOPO = AdmissionClass.READ, AdmissionClass.WRITE, AdmissionClass.TOPOLOGY
EPOCH = RegionEpoch(2, 3)
DESC = RegionDescriptor(7, b"b", b"m", EPOCH, (PeerMeta(1, 11), PeerMeta(2, 12), PeerMeta(3, 13)))
LEADER = RegionView(DESC, peer_id=11, is_leader=True, leader_peer_id=11, leader_store_id=1,
                    applied_index=10, commit_index=10, leader_contact_age=0.0)
FOLLOWER = RegionView(DESC, peer_id=11, is_leader=False, leader_peer_id=12, leader_store_id=2,
                      applied_index=8, commit_index=10, leader_contact_age=0.25)


def ctx(**kw) -> KvContext:
    base = dict(region_id=7, epoch=EPOCH, store_id=1)
    base.update(kw)
    return KvContext(**base)


def run(cls=WRITE, c=None, keys=(b"c",), values=(), view=LEADER, now=0.0, limits=Limits(),
        **kw):
    req = AdmissionRequest(cls, ctx() if c is None else c, keys, values, **kw)
    return admit(req, 1, {7: view} if view is not None else {}, now, limits)


def test_accepted_write_on_leader():
    adm = run()
    assert adm.accepted and adm.reason == R.ACCEPTED and adm.cls == WRITE
    assert (adm.leader_peer_id, adm.leader_store_id) == (11, 1)


def test_canceled_and_timed_out_come_first():
    # Even a request that is otherwise invalid is refused for its context first.
    assert run(c=ctx(store_id=9), cancelled=True).reason == R.CANCELED
    assert run(c=ctx(store_id=9), deadline=5.0, now=5.0).reason == R.TIMED_OUT
    assert run(deadline=5.0, now=4.9).accepted


@pytest.mark.parametrize("kw", [
    dict(c=None, keys=()),  # write without keys
    dict(keys=(b"",)),
    dict(keys=(b"x" * (MAX_KEY_SIZE + 1),)),
    dict(values=(b"v" * (MAX_VALUE_SIZE + 1),)),
    dict(keys=("str",)),
    dict(c=ctx(region_id=0)),
    dict(c=ctx(read_mode=ReadMode.FOLLOWER)),  # a write with a read mode
    dict(c=ctx(max_stale_index=-1), cls=READ),
    dict(cls=READ, keys=(), scan_start=b"c", scan_limit=0),
])
def test_invalid(kw):
    adm = run(**kw)
    assert adm.reason == R.INVALID, adm
    assert adm.detail


def test_missing_context_is_invalid():
    req = AdmissionRequest(WRITE, None, (b"c",))
    assert admit(req, 1, {7: LEADER}, 0.0).reason == R.INVALID


def test_store_not_match():
    adm = run(c=ctx(store_id=2))
    assert adm.reason == R.STORE_NOT_MATCH and "store 2" in adm.detail


def test_not_hosted_unknown_and_uninitialized():
    assert run(view=None).reason == R.NOT_HOSTED
    uninit = RegionView(None, peer_id=11, is_leader=False, leader_peer_id=12, leader_store_id=2)
    adm = run(view=uninit)
    assert adm.reason == R.NOT_HOSTED and adm.leader_store_id == 2


def test_epoch_mismatch_carries_current_epoch_and_descriptor():
    adm = run(c=ctx(epoch=RegionEpoch(1, 3)))
    assert adm.reason == R.EPOCH_MISMATCH
    assert adm.current_epoch == EPOCH and adm.descriptor == DESC
    assert run(c=ctx(epoch=RegionEpoch(3, 3))).reason == R.EPOCH_MISMATCH
    assert run(cls=TOPO, c=ctx(epoch=RegionEpoch(2, 4))).reason == R.EPOCH_MISMATCH


@pytest.mark.parametrize("cls", [READ, WRITE])
@pytest.mark.parametrize("conf_ver", [1, 2, 4, 9])
def test_reads_and_writes_ignore_a_conf_ver_difference(cls, conf_ver):
    """A peer change moves conf_ver, never the range: a KV request routed by a catalog that
    shows a planned (or misses an applied) peer change is served (the apply path checks the
    version only, too); a topology command is not."""
    epoch = RegionEpoch(EPOCH.version, conf_ver)
    assert run(cls=cls, c=ctx(epoch=epoch)).accepted
    if conf_ver != EPOCH.conf_ver:
        assert run(cls=TOPO, c=ctx(epoch=epoch)).reason == R.EPOCH_MISMATCH


def test_key_not_in_region():
    for key in (b"a", b"m", b"zz"):
        adm = run(keys=(b"c", key))
        assert adm.reason == R.KEY_NOT_IN_REGION, key
        assert adm.descriptor == DESC and adm.current_epoch == EPOCH
    assert run(cls=READ, keys=(), scan_start=b"a", scan_limit=5).reason == R.KEY_NOT_IN_REGION
    assert run(cls=READ, keys=(), scan_start=b"b", scan_limit=5).accepted


def test_not_leader_with_hint_for_writes_and_linearizable_reads():
    for cls in (WRITE, READ, TOPO):
        adm = run(cls=cls, view=FOLLOWER)
        assert adm.reason == R.NOT_LEADER, cls
        assert (adm.leader_peer_id, adm.leader_store_id) == (12, 2)
    # follower and bounded-stale reads are served by a follower
    assert run(cls=READ, c=ctx(read_mode=ReadMode.FOLLOWER), view=FOLLOWER).accepted
    assert run(cls=READ, c=ctx(read_mode=ReadMode.BOUNDED_STALE), view=FOLLOWER).accepted


def test_queue_saturated():
    busy = RegionView(DESC, 11, True, 11, 1, queue_depth=4)
    assert run(view=busy, limits=Limits(queue_limit=4)).reason == R.QUEUE_SATURATED
    assert run(view=busy, limits=Limits(queue_limit=5)).accepted
    # reads are not proposals
    assert run(cls=READ, view=busy, limits=Limits(queue_limit=4)).accepted


def test_scheduler_degraded_only_for_topology():
    degraded = Limits(scheduler_degraded=True)
    assert run(cls=TOPO, limits=degraded).reason == R.SCHEDULER_DEGRADED
    assert run(cls=WRITE, limits=degraded).accepted


def test_stale_budgets():
    stale_ctx = ctx(read_mode=ReadMode.BOUNDED_STALE, max_stale_index=1)
    adm = run(cls=READ, c=stale_ctx, view=FOLLOWER)
    assert adm.reason == R.STALE and "2 entries behind" in adm.detail
    assert run(cls=READ, c=ctx(read_mode=ReadMode.BOUNDED_STALE, max_stale_index=2),
               view=FOLLOWER).accepted
    age_ctx = ctx(read_mode=ReadMode.BOUNDED_STALE, max_stale_ms=100)
    assert run(cls=READ, c=age_ctx, view=FOLLOWER).reason == R.STALE
    assert run(cls=READ, c=ctx(read_mode=ReadMode.BOUNDED_STALE, max_stale_ms=300),
               view=FOLLOWER).accepted
    never = RegionView(DESC, 11, False, 0, 0, 5, 5, None)
    assert run(cls=READ, c=age_ctx, view=never).reason == R.STALE
    # the leader is never stale by age
    assert run(cls=READ, c=age_ctx, view=LEADER).accepted


def test_every_reason_is_reachable():
    seen = {
        run(cancelled=True).reason, run(deadline=0.0).reason, run(keys=(b"",)).reason,
        run(c=ctx(store_id=3)).reason, run(view=None).reason,
        run(c=ctx(epoch=RegionEpoch(1, 3))).reason, run(keys=(b"z",)).reason,
        run(view=FOLLOWER).reason,
        run(view=RegionView(DESC, 11, True, 11, 1, queue_depth=9), limits=Limits(1)).reason,
        run(cls=TOPO, limits=Limits(scheduler_degraded=True)).reason,
        run(cls=READ, c=ctx(read_mode=ReadMode.BOUNDED_STALE, max_stale_index=1),
            view=FOLLOWER).reason,
        run().reason,
    }
    assert seen == set(AdmissionReason)
