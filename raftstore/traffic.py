"""The raft traffic of a store: the gate on incoming raft messages and the routing of
outgoing ones (DESIGN 5).

Owns: the checks every incoming raft envelope passes before it reaches its peer's group on
the driver (right store, not impersonated, region id valid, not being destroyed, not
tombstoned, right peer, not from a stale epoch of a non-member, a snapshot only where no
other live replica of this store owns part of its range), every drop counted by reason in
the store's `drops`; creating an uninitialized peer for a leader's message to an unknown
region (bounded by `max_uninitialized`); destroying a hosted peer that a leader addresses by
a later peer id (it was removed without learning it); routing outgoing messages to stores
through the `RaftTransport`; reporting unreachable stores to the leaders. Uses of its store
only what `TrafficStore` names. Never blocks (the batch handler is inline), never creates a
peer for a non-leader message, never writes to LMDB itself (a destroy is the store's batch).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import trio

from nokvpy.protocol import RegionDescriptor, RegionEpoch, RegionState
from nokvpy.raft.types import Message, MessageType
from nokvpy.replication.driver import Driver
from nokvpy.replication.transport import impersonated
from nokvpy.rpc import RaftTransport
from nokvpy.storage import WriteBatch
from nokvpy.wire import DecodeError, RaftBatch, RaftEnvelope, decode
from raftstore.peer import Peer

log = logging.getLogger("nokvpy.raftstore")

LEADER_MESSAGES = frozenset({MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP})


class TrafficStore(Protocol):
    """The store as its raft traffic sees it (raftstore.store.Store)."""

    store_id: int
    cfg: Any  # raftstore.store.StoreConfig (max_uninitialized)
    peers: dict[int, Peer]
    destroying: set[int]
    drops: Counter[str]
    counters: Counter[str]
    driver: Driver
    transport: RaftTransport

    def tombstoned(self, rid: int, peer_id: int, epoch: RegionEpoch | None = None) -> str: ...

    def start_peer(self, rid: int, peer_id: int, desc: RegionDescriptor | None, applied: int,
                   applied_term: int, bootstrap: list[int] | None) -> Peer: ...

    def stage_destroy(self, rid: int, reason: str, peer_id: int) -> WriteBatch | None: ...

    async def commit_destroy(self, rid: int, batch: WriteBatch, reason: str) -> None: ...

    @property
    def running(self) -> bool: ...

    def spawn(self, fn: Callable[[], Any]) -> bool: ...


class RaftTraffic:
    """Incoming raft envelopes to the driver, outgoing messages to the transport."""

    def __init__(self, store: TrafficStore):
        self.store = store

    async def on_raft_batch(self, batch: RaftBatch, ctx: Any) -> None:
        """Inline handler: gate each envelope and hand it to the driver. Never blocks."""
        if batch.to_store != self.store.store_id:
            self.store.drops["wrong_store"] += len(batch.envelopes)
            return None
        if impersonated(batch, ctx):  # a store sending as another store
            self.store.drops["impersonated_sender"] += len(batch.envelopes)
            return None
        for env in batch.envelopes:
            if env.from_store != batch.from_store:
                self.store.drops["impersonated_sender"] += 1
                continue
            self.on_envelope(env)
        return None

    def on_envelope(self, env: RaftEnvelope) -> None:
        drops = self.store.drops
        if env.to_store != self.store.store_id:
            drops["wrong_store"] += 1
            return
        rid = env.group_id
        msg: Message = env.message
        if rid <= 0:
            drops["bad_region_id"] += 1
            return
        if rid in self.store.destroying:
            drops["destroying"] += 1
            return
        peer = self.store.peers.get(rid)
        if peer is None:
            if self.store.tombstoned(rid, msg.to,
                                     RegionEpoch(env.epoch_version, env.epoch_conf_ver)):
                drops["tombstoned"] += 1
                return
            if msg.type not in LEADER_MESSAGES:
                drops["unknown_region"] += 1
                return
            peer = self._create_uninitialized(env)
            if peer is None:
                return
        if msg.to != peer.peer_id:
            if msg.to > peer.peer_id and msg.type in LEADER_MESSAGES:
                self._replace_stale_peer(peer, env)
            else:
                drops["wrong_peer"] += 1
            return
        desc = peer.sm.descriptor
        if desc is not None:
            ev, ec = env.epoch_version, env.epoch_conf_ver
            cur = desc.epoch
            if (ev < cur.version or ec < cur.conf_ver) and not peer.has_member(msg.frm):
                drops["stale_epoch"] += 1
                return
        else:
            peer.node_store[msg.frm] = env.from_store
        if msg.type in LEADER_MESSAGES:
            peer.last_leader_contact = trio.current_time()
            peer.leader_store_hint = env.from_store
        if msg.type == MessageType.SNAP and self._snapshot_overlaps(rid, msg):
            # A region snapshot may only land where no other live replica of this store still
            # owns part of its range (a child whose parent has not applied the split here:
            # the parent's pending writes would land after the snapshot). The leader retries.
            drops["snapshot_overlaps_hosted"] += 1
            return
        if not self.store.driver.step(rid, msg):
            drops["group_stopped"] += 1

    def _replace_stale_peer(self, peer: Peer, env: RaftEnvelope) -> None:
        """A leader addresses a later peer of this region on this store: the one hosted here
        was removed from the region without applying its removal (peer ids only grow, one
        store hosts one peer of a region). Destroy it (tombstoned at its id); the leader's
        next message creates the new peer, which gets a snapshot or the log."""
        desc = peer.descriptor
        ev, ec = env.epoch_version, env.epoch_conf_ver
        if desc is not None and (ev < desc.epoch.version or ec <= desc.epoch.conf_ver):
            # Our removal bumped conf_ver: a message that does not carry a later one cannot
            # prove our peer was removed.
            self.store.drops["wrong_peer"] += 1
            return
        store = self.store
        if not store.running:  # nothing could commit the destroy
            store.drops["wrong_peer"] += 1
            return
        reason = (f"stale peer {peer.peer_id}: store {env.from_store} leads region "
                  f"{peer.region_id} with peer {env.message.to} here at epoch v{ev}/c{ec}")
        batch = store.stage_destroy(peer.region_id, reason, peer.peer_id)
        if batch is None:
            store.drops["wrong_peer"] += 1
            return
        store.drops["stale_peer_replaced"] += 1
        store.counters["stale_peers_destroyed"] += 1
        log.info("store %d: %s", store.store_id, reason)
        store.spawn(partial(store.commit_destroy, peer.region_id, batch, reason))

    def _snapshot_overlaps(self, rid: int, msg: Message) -> bool:
        snap = msg.snapshot
        try:
            image = decode(snap.data) if snap is not None and snap.data else None
        except DecodeError:
            return False
        d = getattr(image, "descriptor", None)
        if not isinstance(d, RegionDescriptor):
            return False
        return any(p.region_id != rid and p.descriptor is not None
                   and p.descriptor.state != RegionState.MERGING and overlaps(d, p.descriptor)
                   for p in self.store.peers.values())

    def send(self, out: list[tuple[int, int, Message, tuple[int, int]]]) -> None:
        envs: list[RaftEnvelope] = []
        me = self.store.store_id
        peers = self.store.peers
        for gid, to, msg, epoch in out:
            peer = peers.get(gid)
            to_store = peer.route(to) if peer is not None else None
            if to_store is None:
                self.store.counters["send_unroutable"] += 1
                continue
            if msg.type == MessageType.SNAP:
                peer.snapshots_sent[to] = trio.current_time()
                self.store.counters["snapshots_sent"] += 1
            envs.append(RaftEnvelope(gid, me, to_store, epoch[0], epoch[1], msg))
        if envs:
            self.store.transport.send(envs)

    def on_unreachable(self, store_id: int) -> None:
        for peer in self.store.peers.values():
            group = peer.group
            if group is None or not group.is_leader:
                continue
            desc = peer.descriptor
            if desc is None:
                continue
            for p in desc.peers:
                if p.store_id == store_id:
                    self.store.driver.report_unreachable(group, p.peer_id)
                    if peer.snapshots_sent.pop(p.peer_id, None) is not None:
                        self.store.driver.report_snapshot(group, p.peer_id, failed=True)

    def _create_uninitialized(self, env: RaftEnvelope) -> Peer | None:
        rid = env.group_id
        msg = env.message
        uninit = sum(1 for p in self.store.peers.values() if not p.initialized)
        if uninit >= self.store.cfg.max_uninitialized:
            self.store.drops["uninitialized_limit"] += 1
            return None
        if msg.to <= 0:
            self.store.drops["bad_peer_id"] += 1
            return None
        log.info("store %d: creating uninitialized peer %d of region %d (message from store %d)",
                 self.store.store_id, msg.to, rid, env.from_store)
        self.store.counters["peers_created_by_message"] += 1
        return self.store.start_peer(rid, msg.to, None, 0, 0, None)


def overlaps(a: RegionDescriptor, b: RegionDescriptor) -> bool:
    return ((not a.end_key or a.end_key > b.start_key)
            and (not b.end_key or b.end_key > a.start_key))
