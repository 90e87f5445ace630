"""Peers are (region id, peer id) wherever a store gates, creates or tombstones (issue 15,
item 1; TiKV's rule): a tombstone blocks its own peer id and older ones, not a later peer of
the same region; a restart hosts a later peer over an older tombstone; the coordinator
tombstones a reported peer older than the one root lists on that store; a later peer that
replays the log from its start does not destroy itself on the older peer's removal; a
learner is caught up only when its store reports it applied (never on match 0)."""

from __future__ import annotations

from collections import Counter

from coordinator.catalog import Catalog
from coordinator.stores import StoreTracker
from nokvpy.protocol import PeerMeta, RegionDescriptor, RegionEpoch, RestartStateKind
from nokvpy.protocol.coordinator_rpc import RegionHeartbeat, StoreHeartbeatRequest
from nokvpy.protocol.raftstore_cmds import AdminCommand, PeerChangePayload, RegionTombstone
from nokvpy.raft.types import ConfChange, ConfChangeType, Entry, EntryType
from nokvpy.storage import ReplayPointer, StoreIdentity, WriteBatch
from nokvpy.wire import encode
from raftstore.restart import LocalImage, derive
from raftstore.topology.apply import ApplyHandlers
from raftstore.topology.membership import learner_applied
from raftstore.topology.tombstone import UNKNOWN_EPOCH, blocks, decode_tombstone, newer

TOMB = RegionTombstone(7, RegionEpoch(2, 3), 14, "removed by peer:7:remove:3:14")
ME = StoreIdentity(0xC1, 3)


def desc(peer_on_3: int, epoch=RegionEpoch(2, 4)) -> RegionDescriptor:
    return RegionDescriptor(7, b"", b"", epoch, (PeerMeta(1, 12), PeerMeta(2, 13),
                                                 PeerMeta(3, peer_on_3)))


def test_a_tombstone_blocks_its_peer_and_older_ones_not_a_later_one():
    assert blocks(None, 1, None) == ""
    assert blocks(TOMB, 14, RegionEpoch(2, 4)) == "old_peer"
    assert blocks(TOMB, 9, RegionEpoch(9, 9)) == "old_peer"
    assert blocks(TOMB, 15, RegionEpoch(2, 3)) == ""  # a learner: no conf_ver bump yet
    assert blocks(TOMB, 15, RegionEpoch(2, 2)) == "stale_epoch"
    assert blocks(TOMB, 15, None) == ""


def test_merged_or_unknown_tombstones_block_every_peer():
    merged = RegionTombstone(7, RegionEpoch(2, 3), 14, "merged into region 5")
    assert blocks(merged, 99, RegionEpoch(9, 9)) == "merged"
    unknown = RegionTombstone(7, UNKNOWN_EPOCH, 0, "")
    assert blocks(unknown, 99, RegionEpoch(9, 9)) == "unknown_peer"
    assert blocks(decode_tombstone(7, b"\xc1garbage"), 99, None) == "unknown_peer"
    assert blocks(decode_tombstone(7, None), 99, None) == "unknown_peer"
    assert decode_tombstone(7, encode(TOMB)) == TOMB
    assert decode_tombstone(8, encode(TOMB)).peer_id == 0  # another region's record


def test_the_later_peer_id_wins_and_merged_stays_merged():
    later = RegionTombstone(7, RegionEpoch(2, 5), 20, "removed")
    assert newer(TOMB, later) == later and newer(later, TOMB) == later
    merged = RegionTombstone(7, RegionEpoch(2, 3), 14, "merged into region 5")
    assert newer(merged, later) == merged
    assert newer(None, TOMB) == TOMB


def test_restart_hosts_a_later_peer_over_an_older_tombstone():
    image = LocalImage(ME, {7: desc(15)}, {7: ReplayPointer(30, 2)}, tombstones=frozenset({7}),
                       tombstone_records={7: TOMB})
    st = derive(image, ME)
    assert st.hosted == (7,) and st.not_started == () and st.kind == RestartStateKind.READY
    image = LocalImage(ME, {7: desc(14)}, {7: ReplayPointer(30, 2)}, tombstones=frozenset({7}),
                       tombstone_records={7: TOMB})
    st = derive(image, ME)
    assert st.hosted == () and st.not_started == (7,)
    assert "tombstone wins" in st.message


def _tracker_with(d: RegionDescriptor, report: RegionHeartbeat):
    tracker = StoreTracker()
    tracker.is_pending = lambda rid: True  # an addition is pending: only the peer id decides
    catalog = Catalog.from_descriptors(Catalog.empty().token, [d])
    return tracker.on_heartbeat(StoreHeartbeatRequest(3, "h:3", [report]), catalog, True,
                                True, 1.0)


def test_the_coordinator_tombstones_a_peer_older_than_the_one_root_lists():
    # store 3 still hosts peer 14 at (2, 3): removed, then added again as peer 15
    old = RegionHeartbeat(7, RegionEpoch(2, 3), 14, False, 12, 40)
    out = _tracker_with(desc(15), old)
    assert out.tombstoned == [7] and out.stale_region_ids == []
    assert any(d.kind == "orphan_peer" and "later peer 15" in d.detail for d in out.drift)
    # the new peer itself is recorded, not tombstoned
    new = RegionHeartbeat(7, RegionEpoch(2, 4), 15, False, 12, 40)
    out = _tracker_with(desc(15), new)
    assert out.tombstoned == [] and out.stale_region_ids == []
    # a stale report of the listed peer is refused as before, never tombstoned
    stale = RegionHeartbeat(7, RegionEpoch(2, 3), 15, False, 12, 40)
    out = _tracker_with(desc(15), stale)
    assert out.tombstoned == [] and out.stale_region_ids == [7]


def test_a_learner_is_caught_up_only_when_its_store_reports_it_applied():
    ok = {"peer_id": 15, "initialized": True, "applied_index": 40}
    assert learner_applied(ok, 15, 40)
    assert not learner_applied(None, 15, 40)
    assert not learner_applied(ok, 15, 41)
    assert not learner_applied(ok, 16, 40)  # another peer of the region (an older one)
    assert not learner_applied({**ok, "initialized": False}, 15, 40)
    assert not learner_applied({**ok, "applied_index": 0}, 15, 0)  # never on 0


class _Peer:
    def __init__(self, peer_id: int):
        self.peer_id = peer_id


class _Store:
    store_id = 3

    def __init__(self, local_peer: int):
        self.counters: Counter[str] = Counter()
        self.peers = {7: _Peer(local_peer)}
        self.tombstones: dict = {}


class _Rt:
    def __init__(self, local_peer: int):
        self.store = _Store(local_peer)
        self.removed: list[tuple[int, str, int]] = []

    def on_local_peer_removed(self, rid: int, tid: str, peer_id: int) -> None:
        self.removed.append((rid, tid, peer_id))


class _Sm:
    region_id = 7

    def __init__(self, d: RegionDescriptor):
        self.descriptor = d
        self.staged_descriptor = None


def _apply_removal_of_peer_14(local_peer: int) -> _Rt:
    """Apply `REMOVE_NODE 14` (the replica on store 3) on store 3, whose local peer of the
    region is `local_peer`."""
    rt = _Rt(local_peer)
    h = ApplyHandlers(rt)
    d = desc(14, RegionEpoch(2, 3))
    target = RegionDescriptor(7, b"", b"", RegionEpoch(2, 4), d.peers[:2])
    payload = PeerChangePayload("remove", 3, 14, d, target, 1)
    cmd = AdminCommand("peer_change", 7, d.epoch, "not-the-terminal-tid", payload)
    cc = ConfChange(ConfChangeType.REMOVE_NODE, 14, encode(cmd))
    batch = WriteBatch()
    h.apply_conf_change(_Sm(d), batch, Entry(2, 30, EntryType.CONF_CHANGE, cc.encode()))
    for cb in batch.callbacks:
        cb()
    return rt


def test_replaying_an_older_peers_removal_does_not_remove_the_later_peer():
    # peer 14 applying its own removal destroys itself ...
    assert _apply_removal_of_peer_14(14).removed == [(7, "not-the-terminal-tid", 14)]
    # ... but peer 15 (added on store 3 again) replaying the log from its start applies the
    # same entry, when the descriptor of that time still lists peer 14 on store 3: nothing
    assert _apply_removal_of_peer_14(15).removed == []
