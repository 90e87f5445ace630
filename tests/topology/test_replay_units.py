"""A replica replaying history must not publish it (issue 15): pure apply handlers over a
fake store, no processes.

A store's replica of region 1 was removed (peer 4 on store 3, the removal executed by store 3
while it led) and later added back as peer 5. If the new peer replays the region's log from
its start, it applies that old removal again. It is not the peer the removal names, so it
must not stage the removal's terminal event: built from its own, current descriptor, the
event was one root refuses for good ("a peer removal changes nothing else"), and the store's
publish outbox stayed blocked (seeds 28 and 30 of the randomized topology test). A replica
that is the base's member (a lagging follower catching up) still stages it, as before."""

from __future__ import annotations

from collections import Counter

from nokvpy.protocol import PeerMeta, RegionDescriptor, RegionEpoch
from nokvpy.protocol.raftstore_cmds import AdminCommand, PeerChangePayload
from nokvpy.raft.types import ConfChange, ConfChangeType, Entry, EntryType
from nokvpy.storage import WriteBatch
from nokvpy.wire import encode
from raftstore.execution import ExecutionTracker
from raftstore.topology.apply import ApplyHandlers
from raftstore.topology.lifecycle import Lifecycle

BASE = RegionDescriptor(1, b"", b"", RegionEpoch(1, 2),
                        (PeerMeta(1, 2), PeerMeta(2, 3), PeerMeta(3, 4)))
TARGET = RegionDescriptor(1, b"", b"", RegionEpoch(1, 3), (PeerMeta(1, 2), PeerMeta(2, 3)))
NOW = RegionDescriptor(1, b"", b"", RegionEpoch(1, 5),
                       (PeerMeta(1, 2), PeerMeta(2, 3), PeerMeta(3, 5)))
TID = "peer:1:remove:3:4"


class _Peer:
    def __init__(self, peer_id: int):
        self.peer_id = peer_id


class _Store:
    def __init__(self, store_id: int, peer_id: int):
        self.store_id = store_id
        self.counters: Counter[str] = Counter()
        self.peers = {1: _Peer(peer_id)}
        self.tombstones: set = set()


class _Publisher:
    def __init__(self):
        self.staged: list = []

    def stage(self, batch, entry) -> None:
        self.staged.append(entry)


class _Rt:
    def __init__(self, store_id: int, peer_id: int):
        self.store = _Store(store_id, peer_id)
        self.lifecycle = Lifecycle(ExecutionTracker())
        self.publisher = _Publisher()


class _Sm:
    region_id = 1

    def __init__(self, desc):
        self.descriptor = desc
        self.staged_descriptor = None


def removal_entry() -> Entry:
    payload = PeerChangePayload("remove", 3, 4, BASE, TARGET, executor_store=3)
    cmd = AdminCommand("peer_change", 1, BASE.epoch, TID, payload)
    cc = ConfChange(ConfChangeType.REMOVE_NODE, 4, encode(cmd))
    return Entry(3, 40, EntryType.CONF_CHANGE, cc.encode())


def test_a_later_peer_replaying_its_predecessors_removal_publishes_nothing():
    rt = _Rt(store_id=3, peer_id=5)
    ApplyHandlers(rt).apply_conf_change(_Sm(NOW), WriteBatch(), removal_entry())
    assert rt.publisher.staged == []
    assert rt.store.counters["replayed_terminal_not_staged"] == 1


def test_a_member_of_the_base_catching_up_still_stages_the_terminal():
    rt = _Rt(store_id=2, peer_id=3)
    ApplyHandlers(rt).apply_conf_change(_Sm(BASE), WriteBatch(), removal_entry())
    [entry] = rt.publisher.staged
    assert entry.event.payload.target == TARGET and entry.event.payload.base == BASE


class _Group:
    hard_state = type("HS", (), {"term": 0, "vote": 0})()


class _RaftLog:
    def group(self, rid):
        return _Group()

    def stage_destroy_group(self, batch, rid):
        pass

    def stage_apply_snapshot(self, batch, rid, meta):
        pass

    def stage_hard_state(self, batch, rid, hs):
        pass


class _Meta:
    def stage_region(self, batch, rid, raw):
        pass

    def stage_replay_pointer(self, batch, rid, index, term):
        pass


class _Driver:
    def __init__(self):
        self.removed: list[int] = []

    def remove_group(self, rid):
        self.removed.append(rid)


def test_a_split_child_drops_its_traffic_until_its_batch_is_durable():
    """Between staging a split child (the uninitialized peer its leader's message created is
    removed) and the batch's commit starting the child, a leader's message must not create
    another uninitialized peer: that one's raft node disagreed with the child state written
    under it, the store crashed ("applied 46 out of range [prev applied 0, committed 41]",
    jepsen-lite churn seed 3) and the child was never started."""
    rt = _Rt(store_id=2, peer_id=7)
    store = rt.store
    store.peers = {5: _Peer(7)}  # uninitialized: sm.applied below INIT_INDEX
    store.peers[5].sm = type("Sm", (), {"applied": 0})()
    store.destroying = set()
    store.raftlog, store.meta, store.driver = _RaftLog(), _Meta(), _Driver()
    child = RegionDescriptor(5, b"k0", b"", RegionEpoch(2, 1),
                             (PeerMeta(1, 6), PeerMeta(2, 7), PeerMeta(3, 8)))
    assert ApplyHandlers(rt)._stage_child(WriteBatch(), child)
    assert 5 not in store.peers and store.driver.removed == [5]
    assert 5 in store.destroying  # RaftTraffic drops its messages ("destroying")
