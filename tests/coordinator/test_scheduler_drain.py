"""The scheduler drains a store being retired (pure: fake catalog, store tracker and leader
observations; a real RootState for the drain records; no processes).

A draining store (a rooted drain record, not retired) is left like a DOWN store: each region
with a replica on it first gets a peer on the least loaded live store lacking one, then loses
the draining replica (also when the leader is on it: the store hands leadership over), never
below the replication and only while every other replica is on an UP store. A draining
store never receives a replica, from repair or from the replica count."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from coordinator.scheduler import (
    DRAIN_ACTION,
    Scheduler,
    SchedulerConfig,
    drain_record_id,
    draining_store_ids,
)
from metaroot.state import RootState
from nokvpy.protocol.coordinator_rpc import RegionHeartbeat
from nokvpy.protocol.enums import EventKind, StoreState
from nokvpy.protocol.records import (
    PeerMeta,
    RecoveryRecord,
    RegionDescriptor,
    RegionEpoch,
    RootEvent,
    RootToken,
    StoreMembership,
)

REPLICATION = 3


@dataclass
class FakeCatalog:
    descs: list[RegionDescriptor]
    store_ids: list[int]
    retired: set[int] = field(default_factory=set)

    def regions(self):
        return list(self.descs)

    def stores(self):
        return {s: SimpleNamespace(state=StoreState.RETIRED if s in self.retired
                                   else StoreState.UP) for s in self.store_ids}

    def get(self, rid):
        return next((d for d in self.descs if d.region_id == rid), None)


@dataclass
class FakeTracker:
    up: set[int] = field(default_factory=set)
    stores: dict = field(default_factory=dict)  # nothing heard: no store is DOWN for repair

    def is_up(self, sid, now):
        return sid in self.up

    def state_of(self, sid, now):
        return StoreState.UP if sid in self.up else StoreState.DOWN


def region(rid: int, stores: list[int], epoch=RegionEpoch(1, 5)) -> RegionDescriptor:
    peers = tuple(PeerMeta(s, rid * 100 + s) for s in stores)
    return RegionDescriptor(rid, b"%d" % rid, b"%d" % (rid + 1), epoch, peers)


def obs_for(d: RegionDescriptor, leader: int):
    return (leader, RegionHeartbeat(d.region_id, d.epoch, d.region_id * 100 + leader, True,
                                    d.region_id * 100 + leader, 10))


def scheduler(up: set[int], repair_after: float = 30.0) -> Scheduler:
    svc = SimpleNamespace(stores=FakeTracker(up), replication=REPLICATION)
    return Scheduler(svc, SchedulerConfig(repair_after=repair_after, replica_after=5.0))


# (name, region stores, leader, up stores, draining, other regions (load), expected op)
CASES = [
    ("add first, on the least loaded live store", [1, 2, 3], 1, {1, 2, 3, 4, 5}, {3},
     [[4, 1, 2]], ("add_peer", 5)),
    ("then remove the draining replica", [1, 2, 3, 5], 1, {1, 2, 3, 4, 5}, {3}, [],
     ("remove_peer", 3)),
    ("the leader's own replica is removed too (the store hands leadership over)",
     [1, 2, 3, 4], 3, {1, 2, 3, 4}, {3}, [], ("remove_peer", 3)),
    ("never onto another draining store", [1, 2, 3], 1, {1, 2, 3, 4, 5}, {3, 4}, [],
     ("add_peer", 5)),
    ("no live store lacking a replica: nothing (never below the replication)",
     [1, 2, 3], 1, {1, 2, 3}, {3}, [], None),
    ("another replica not UP: the draining one stays", [1, 2, 3, 4], 1, {1, 3, 4}, {3}, [],
     None),
    ("no draining store: nothing", [1, 2, 3], 1, {1, 2, 3, 4}, set(), [], None),
]


@pytest.mark.parametrize("name,stores,leader,up,draining,others,want", CASES,
                         ids=[c[0] for c in CASES])
def test_drain_table(name, stores, leader, up, draining, others, want):
    d = region(1, stores)
    descs = [d] + [region(10 + i, o) for i, o in enumerate(others)]
    cat = FakeCatalog(descs, [1, 2, 3, 4, 5])
    s = scheduler(up)
    s._repair(cat, {1: obs_for(d, leader)}, set(), 100.0, set(draining))
    f = s.inflight.get(1)
    if want is None:
        assert f is None
        return
    assert f is not None and (f.op.kind, f.op.store_id) == want
    assert f.store_id == leader  # handed to the region leader's store
    if f.op.kind == "remove_peer":
        assert f.op.peer_id == d.peer_on(want[1]).peer_id


def test_a_learner_does_not_count_toward_the_replication_of_a_drain():
    d = region(1, [1, 2, 3, 4])
    d = RegionDescriptor(1, d.start_key, d.end_key, d.epoch,
                         tuple(PeerMeta(p.store_id, p.peer_id, learner=p.store_id == 4)
                               for p in d.peers))
    s = scheduler({1, 2, 3, 4})
    s._repair(FakeCatalog([d], [1, 2, 3, 4]), {1: obs_for(d, 1)}, set(), 0.0, {3})
    assert s.inflight == {}
    assert s.counters["drain_blocked"] == 1


def test_drain_runs_even_with_repair_off_and_a_busy_region_waits():
    d = region(1, [1, 2, 3])
    cat = FakeCatalog([d], [1, 2, 3, 4])
    s = scheduler({1, 2, 3, 4}, repair_after=0)
    s._repair(cat, {1: obs_for(d, 1)}, {1}, 0.0, {3})
    assert s.inflight == {}
    s._repair(cat, {1: obs_for(d, 1)}, set(), 0.0, {3})
    assert (s.inflight[1].op.kind, s.inflight[1].op.store_id) == ("add_peer", 4)


def test_the_replica_count_never_adds_on_a_draining_store_and_removes_it_first():
    short = region(1, [1, 2])
    s = scheduler({1, 2, 3, 4})
    cat = FakeCatalog([short], [1, 2, 3, 4])
    for now in (0.0, 6.0):
        s._replica_count(cat, {1: obs_for(short, 1)}, set(), now, {3})
    assert (s.inflight[1].op.kind, s.inflight[1].op.store_id) == ("add_peer", 4)
    over = region(2, [1, 2, 3, 4])
    s = scheduler({1, 2, 3, 4})
    cat = FakeCatalog([over, region(3, [4, 1, 2])], [1, 2, 3, 4])
    for now in (0.0, 6.0):
        s._replica_count(cat, {2: obs_for(over, 1)}, set(), now, {2})
    assert (s.inflight[2].op.kind, s.inflight[2].op.store_id) == ("remove_peer", 2)


def _root(*events: RootEvent) -> RootState:
    st = RootState()
    for i, ev in enumerate(events, start=1):
        st = st.apply(RootToken(1, i), ev)
    return st


def _drain(sid: int) -> RootEvent:
    return RootEvent(EventKind.RECOVERY_RECORDED,
                     RecoveryRecord(drain_record_id(sid), DRAIN_ACTION, "asked"))


def test_draining_store_ids_reads_the_rooted_drain_records():
    joined = [RootEvent(EventKind.STORE_JOINED, StoreMembership(s, f"h:{s}")) for s in (1, 2, 3)]
    assert draining_store_ids(_root(*joined)) == set()
    assert draining_store_ids(_root(*joined, _drain(2))) == {2}
    other = RootEvent(EventKind.RECOVERY_RECORDED,
                      RecoveryRecord(drain_record_id(3), "something_else", "x"))
    assert draining_store_ids(_root(*joined, other)) == set()
    retired = RootEvent(EventKind.STORE_RETIRED, StoreMembership(2))
    assert draining_store_ids(_root(*joined, _drain(2), retired)) == set()


@pytest.mark.parametrize("unsafe", [False, True], ids=["guarded", "NOKV_UNSAFE_DRAIN"])
def test_a_drain_never_takes_a_region_below_its_replication_on_up_stores(unsafe):
    """Region on stores 1-4 (replication 3): 2 is not UP (not down long enough for repair
    yet), 3 is draining. Removing 3 now would leave 2 replicas on UP stores (1, 4): one more
    failure and the region has no quorum. The guard waits; the test-only switch that turns
    it off is caught here."""
    up = {1, 3, 4}
    d = region(1, [1, 2, 3, 4])
    s = scheduler(up)
    s.unsafe_drain = unsafe  # what NOKV_UNSAFE_DRAIN=1 sets in a coordinator
    s._repair(FakeCatalog([d], [1, 2, 3, 4, 5]), {1: obs_for(d, 1)}, set(), 100.0, {3})
    f = s.inflight.get(1)
    removed = f.op.store_id if f is not None and f.op.kind == "remove_peer" else None
    up_after = [q.store_id for q in d.peers if q.store_id != removed and q.store_id in up]
    assert (len(up_after) >= REPLICATION) is not unsafe, (removed, up_after)
