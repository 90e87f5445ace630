"""One region replica hosted on this store: the raft wrapper around a driver group.

Owns: the peer's identity (region id, peer id), its state machine, how its raft node ids map
to store ids (from the region descriptor, else from the `from_store` of incoming envelopes,
which is all an uninitialized peer knows), its leader-contact clock (for bounded-stale reads),
its proposal in-flight count (for QUEUE_SATURATED), the snapshots it has in flight as a
leader, and its summary for admission (`view`) and heartbeats. Never runs a loop, never
touches raft state outside the driver (reads of role / indexes are fine), never does I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nokvpy.protocol import RegionDescriptor
from nokvpy.protocol.coordinator_rpc import RegionHeartbeat
from nokvpy.raft import ProgressState, RawNode
from raftstore.admission import RegionView
from raftstore.apply import RegionStateMachine

if TYPE_CHECKING:
    from nokvpy.replication.driver import Group


class Peer:
    __slots__ = (
        "region_id", "peer_id", "store_id", "sm", "group", "node_store", "in_flight",
        "last_leader_contact", "snapshots_sent", "created_at", "leader_store_hint",
        "_store_of_peer", "_desc_for_map",
    )

    def __init__(self, region_id: int, peer_id: int, store_id: int, sm: RegionStateMachine,
                 now: float):
        self.region_id = region_id
        self.peer_id = peer_id
        self.store_id = store_id
        self.sm = sm
        self.group: Group | None = None  # set once added to the driver
        # Raft node id -> store id learned from incoming envelopes (uninitialized peers).
        self.node_store: dict[int, int] = {}
        self.in_flight = 0  # Invariant: proposals submitted to the driver and not yet resolved
        self.last_leader_contact: float | None = None
        self.snapshots_sent: dict[int, float] = {}  # node id -> when (leader only)
        self.created_at = now
        self.leader_store_hint = 0
        self._store_of_peer: dict[int, int] = {}
        self._desc_for_map: RegionDescriptor | None = None

    # ---- identity and routing --------------------------------------------------------

    @property
    def descriptor(self) -> RegionDescriptor | None:
        return self.sm.descriptor

    @property
    def initialized(self) -> bool:
        return self.sm.descriptor is not None

    def _peer_map(self) -> dict[int, int]:
        desc = self.sm.descriptor
        if desc is not self._desc_for_map:
            self._desc_for_map = desc
            self._store_of_peer = {} if desc is None else {p.peer_id: p.store_id
                                                           for p in desc.peers}
        return self._store_of_peer

    def route(self, node_id: int) -> int | None:
        """The store hosting raft node `node_id` of this region (None if unknown)."""
        store = self._peer_map().get(node_id)
        if store is None:
            store = self.node_store.get(node_id)
        return store

    def has_member(self, node_id: int) -> bool:
        return node_id in self._peer_map()

    # ---- raft state ------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        g = self.group
        return g is not None and g.is_leader

    @property
    def leader_peer_id(self) -> int:
        g = self.group
        return g.leader_id if g is not None else 0

    def leader_store_id(self) -> int:
        lead = self.leader_peer_id
        if not lead:
            return 0
        if lead == self.peer_id:
            return self.store_id
        return self.route(lead) or 0

    def commit_index(self) -> int:
        g = self.group
        return g.node.basic_status().commit if g is not None else 0

    def view(self, now: float) -> RegionView:
        g = self.group
        leader = g is not None and g.is_leader
        contact = self.last_leader_contact
        return RegionView(
            descriptor=self.sm.descriptor,
            peer_id=self.peer_id,
            is_leader=leader,
            leader_peer_id=self.leader_peer_id,
            leader_store_id=self.leader_store_id(),
            applied_index=self.sm.applied,
            commit_index=self.commit_index(),
            leader_contact_age=0.0 if leader else (None if contact is None else now - contact),
            queue_depth=self.in_flight,
        )

    def snapshots_stuck(self, now: float, timeout: float) -> list[int]:
        """Nodes whose snapshot was sent more than `timeout` seconds ago and whose progress is
        still in snapshot state (lost in transit): the leader must be told to retry."""
        if not self.snapshots_sent:
            return []
        g = self.group
        stuck: list[int] = []
        if g is None or not g.is_leader:
            self.snapshots_sent.clear()
            return stuck
        progress = g.node.status().progress
        for node, sent in list(self.snapshots_sent.items()):
            pr = progress.get(node)
            if pr is None or pr.state != ProgressState.SNAPSHOT:
                del self.snapshots_sent[node]
            elif now - sent > timeout:
                del self.snapshots_sent[node]
                stuck.append(node)
        return stuck

    # ---- heartbeat -------------------------------------------------------------------

    def heartbeat(self, approx_keys: int = 0, approx_bytes: int = 0) -> RegionHeartbeat | None:
        desc = self.sm.descriptor
        g = self.group
        if desc is None or g is None:
            return None
        writes, self.sm.writes_since_heartbeat = self.sm.writes_since_heartbeat, 0
        voters: tuple[int, ...] = ()
        learners: tuple[int, ...] = ()
        if g.is_leader:
            voters, learners = g.conf_state.voters, g.conf_state.learners
        return RegionHeartbeat(
            region_id=self.region_id,
            epoch=desc.epoch,
            peer_id=self.peer_id,
            is_leader=g.is_leader,
            leader_peer_id=g.leader_id,
            applied_index=self.sm.applied,
            approx_keys=approx_keys,
            approx_bytes=approx_bytes,
            writes=writes,
            voters=tuple(voters),
            learners=tuple(learners),
        )


def bootstrap(node: RawNode, voters: list[int], descriptor: bytes) -> None:
    """Start a brand-new region group: `RawNode.bootstrap(voters)` with the encoded region
    descriptor as the first ADD_NODE entry's context. The log is self-describing, so a peer
    that later receives it from index 1 (instead of a snapshot) learns its descriptor by
    applying entry 1. Every founding member bootstraps with the same descriptor, so the
    founding entries are identical on all of them."""
    if not voters:
        raise ValueError("bootstrap needs at least one voter")
    node.bootstrap(voters, context=descriptor)
