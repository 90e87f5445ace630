"""Region leaders while a peer change is pending (pure: StoreTracker with a real Catalog).

The catalog installs a planned peer change's target at once; the leader executing it keeps
reporting the base epoch until it applies. Its report is refused as stale (not recorded as the
region's), but it is still the region's leader for routes: before, the region had no leader
for as long as the change took. Nothing else a stale report claims is believed."""

from __future__ import annotations

import pytest

from coordinator.catalog import Catalog
from coordinator.stores import StoreTracker
from nokvpy.protocol.coordinator_rpc import RegionHeartbeat, StoreHeartbeatRequest
from nokvpy.protocol.records import PeerMeta, RegionDescriptor, RegionEpoch, RootToken

TARGET = RegionDescriptor(1, b"", b"", RegionEpoch(3, 8),
                          (PeerMeta(1, 11), PeerMeta(2, 12), PeerMeta(3, 19)), revision=9)


def beat(tracker: StoreTracker, epoch: RegionEpoch, leader: bool = True, sid: int = 1):
    catalog = Catalog.from_descriptors(RootToken(1, 9), [TARGET])
    hb = RegionHeartbeat(1, epoch, 10 + sid, leader, 11, 50)
    return tracker.on_heartbeat(StoreHeartbeatRequest(sid, f"127.0.0.1:{sid}", [hb]), catalog,
                                True, True, 100.0)


@pytest.mark.parametrize("pending", [True, False])
def test_the_leader_of_a_pending_peer_change_keeps_leading(pending):
    t = StoreTracker()
    t.is_pending = lambda rid: pending
    out = beat(t, RegionEpoch(3, 7))
    assert out.stale_region_ids == [1]  # the report itself is refused either way
    assert t.leader_of(1, 100.0) == (1 if pending else 0)
    assert 1 not in t.stores[1].regions  # never recorded as the region's report


@pytest.mark.parametrize("epoch,leader", [
    (RegionEpoch(2, 7), True),   # the range moved since: not this change's base
    (RegionEpoch(3, 7), False),  # not a leader claim
])
def test_other_stale_reports_claim_nothing(epoch, leader):
    t = StoreTracker()
    t.is_pending = lambda rid: True
    beat(t, epoch, leader)
    assert t.leader_of(1, 100.0) == 0


def test_a_later_claim_replaces_it_and_a_dropped_claim_is_cleared():
    t = StoreTracker()
    t.is_pending = lambda rid: True
    beat(t, RegionEpoch(3, 7), sid=1)
    beat(t, RegionEpoch(3, 8), sid=2)
    assert t.leader_of(1, 100.0) == 2
    beat(t, RegionEpoch(3, 8), leader=False, sid=2)
    assert t.leader_of(1, 100.0) == 0
