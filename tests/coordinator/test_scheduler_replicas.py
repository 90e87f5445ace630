"""The scheduler keeps every region at the replication factor (pure: fake catalog, store
tracker and leader observations; no processes).

A region whose peer count differs from the replication while all of its peers are on UP
stores gets, after `replica_after` seconds in a row, one peer added on the least loaded live
store lacking one, or one peer removed (never the leader's); nothing while the region is
busy, while a peer's store is not UP (replica repair's case), or before the delay."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.scheduler import Scheduler, SchedulerConfig
from nokvpy.protocol.coordinator_rpc import RegionHeartbeat
from nokvpy.protocol.enums import StoreState
from nokvpy.protocol.records import PeerMeta, RegionDescriptor, RegionEpoch

REPLICATION = 3
STORES = range(1, 6)


@dataclass
class FakeCatalog:
    descs: list[RegionDescriptor]
    store_ids: list[int]

    def regions(self):
        return list(self.descs)

    def stores(self):
        return {s: SimpleNamespace(state=StoreState.UP) for s in self.store_ids}

    def get(self, rid):
        return next((d for d in self.descs if d.region_id == rid), None)


@dataclass
class FakeTracker:
    up: set[int] = field(default_factory=set)

    def is_up(self, sid, now):
        return sid in self.up


def region(rid: int, stores: list[int], epoch=RegionEpoch(1, 5)) -> RegionDescriptor:
    peers = tuple(PeerMeta(s, rid * 100 + s) for s in stores)
    return RegionDescriptor(rid, b"%d" % rid, b"%d" % (rid + 1), epoch, peers)


def scheduler(up: set[int], after: float = 5.0) -> Scheduler:
    svc = SimpleNamespace(stores=FakeTracker(up), replication=REPLICATION)
    return Scheduler(svc, SchedulerConfig(replica_after=after))


def obs_for(d: RegionDescriptor, leader: int, epoch: RegionEpoch | None = None):
    return (leader, RegionHeartbeat(d.region_id, epoch or d.epoch, d.region_id * 100 + leader,
                                    True, d.region_id * 100 + leader, 10))


def test_a_short_region_gets_a_peer_after_the_delay_only():
    d = region(1, [1, 2])
    cat = FakeCatalog([d], [1, 2, 3])
    s = scheduler({1, 2, 3})
    obs = {1: obs_for(d, 1)}
    s._replica_count(cat, obs, set(), 100.0)
    s._replica_count(cat, obs, set(), 104.9)
    assert s.inflight == {}
    s._replica_count(cat, obs, set(), 105.0)
    op = s.inflight[1].op
    assert (op.kind, op.store_id) == ("add_peer", 3)


def test_an_over_replicated_region_loses_a_follower_never_the_leader():
    d = region(1, [1, 2, 3, 4])
    cat = FakeCatalog([d, region(2, [2, 3, 5]), region(3, [3, 4, 5])], [1, 2, 3, 4, 5])
    s = scheduler({1, 2, 3, 4, 5}, after=0.5)
    obs = {1: obs_for(d, 3)}
    s._replica_count(cat, obs, set(), 0.0)
    s._replica_count(cat, obs, set(), 1.0)
    op = s.inflight[1].op
    assert op.kind == "remove_peer" and op.store_id != 3
    assert op.peer_id == d.peer_on(op.store_id).peer_id


def test_a_region_with_a_peer_on_a_store_not_up_is_left_to_repair():
    d = region(1, [1, 2])
    cat = FakeCatalog([d], [1, 2, 3])
    s = scheduler({1, 3})  # store 2 is not UP
    for now in (0.0, 10.0, 20.0):
        s._replica_count(cat, {1: obs_for(d, 1)}, set(), now)
    assert s.inflight == {}


def test_a_leader_behind_the_catalog_or_a_busy_region_gets_nothing():
    d = region(1, [1, 2])
    cat = FakeCatalog([d], [1, 2, 3])
    s = scheduler({1, 2, 3}, after=1.0)
    behind = {1: obs_for(d, 1, RegionEpoch(1, 4))}
    for now in (0.0, 2.0, 4.0):
        s._replica_count(cat, behind, set(), now)
        s._replica_count(cat, {1: obs_for(d, 1)}, {1}, now)
    assert s.inflight == {}


def test_a_region_back_at_the_replication_restarts_the_delay():
    short, whole = region(1, [1, 2]), region(1, [1, 2, 3])
    s = scheduler({1, 2, 3}, after=5.0)
    s._replica_count(FakeCatalog([short], [1, 2, 3]), {1: obs_for(short, 1)}, set(), 0.0)
    s._replica_count(FakeCatalog([whole], [1, 2, 3]), {1: obs_for(whole, 1)}, set(), 3.0)
    s._replica_count(FakeCatalog([short], [1, 2, 3]), {1: obs_for(short, 1)}, set(), 6.0)
    assert s.inflight == {}  # short again only since 6.0
    s._replica_count(FakeCatalog([short], [1, 2, 3]), {1: obs_for(short, 1)}, set(), 11.0)
    assert s.inflight[1].op.kind == "add_peer"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sets(st.sampled_from(list(STORES)), min_size=1, max_size=5),
                min_size=1, max_size=6),
       st.sets(st.sampled_from(list(STORES)), min_size=1),
       st.sets(st.integers(1, 6)), st.data())
def test_every_operation_moves_the_count_toward_the_replication(peer_sets, up, busy, data):
    descs = [region(i + 1, sorted(ps)) for i, ps in enumerate(peer_sets)]
    cat = FakeCatalog(descs, list(STORES))
    obs = {d.region_id: obs_for(d, data.draw(st.sampled_from([p.store_id for p in d.peers])))
           for d in descs}
    s = scheduler(set(up), after=1.0)
    s._replica_count(cat, obs, set(busy), 0.0)
    s._replica_count(cat, obs, set(busy), 2.0)
    for d in descs:
        f = s.inflight.get(d.region_id)
        all_up = all(p.store_id in up for p in d.peers)
        off = len(d.peers) != REPLICATION
        if f is None:
            lacking = [x for x in up if d.peer_on(x) is None]
            assert not off or not all_up or d.region_id in busy or \
                (len(d.peers) < REPLICATION and not lacking)
            continue
        assert off and all_up and d.region_id not in busy
        if len(d.peers) < REPLICATION:
            assert f.op.kind == "add_peer" and f.op.store_id in up
            assert d.peer_on(f.op.store_id) is None
        else:
            assert f.op.kind == "remove_peer" and f.op.store_id != obs[d.region_id][0]
            assert d.peer_on(f.op.store_id) is not None
