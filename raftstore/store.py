"""The store: many region peers on one ready-loop driver, and the KV / admin RPC handlers.

Owns: the hosted peer table (created from the coordinator's `should_host` for initial
regions, from raft messages for unknown regions, from localmeta on restart), the gate on
incoming raft traffic (every drop counted by reason), routing outgoing raft messages to
stores (batched per destination by the `RaftTransport`), admission of every request (a write
finding its region's proposal queue full waits for a slot, in a bounded first-come line, until
just before its deadline: `_admit_write`), the read and write paths, region removal
(tombstones), execution tracking, the `ExecutionStatus` body and the outbox operator RPC
(`OutboxRequest`, carried out by raftstore.outbox).

Peers are (region id, peer id): a tombstone keeps out the peer it destroyed and older ones,
not a later peer of the same region (`raftstore.topology_tombstone`); a leader message for a
later peer id than the one hosted here means the hosted one was removed without learning it:
it is destroyed (tombstoned at its id) and the next message creates the new one; the
coordinator's `tombstoned` answer applies to the peer the heartbeat reported, never to a later
one. Never lets static configuration decide what it hosts, never writes to LMDB outside
`env.commit` batches, and never answers a refusal without an `Admission` reason.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import trio

from nokvpy import failpoints
from nokvpy.protocol import (
    Admission,
    AdmissionClass,
    AdmissionReason,
    ExecutionOutcome,
    RegionDescriptor,
    RegionEpoch,
    RegionState,
    RestartStateKind,
)
from nokvpy.protocol.coordinator_rpc import StoreHeartbeatReply, StoreHeartbeatRequest
from nokvpy.protocol.raftstore_cmds import (
    KvOp,
    KvOpKind,
    KvResult,
    RegionTombstone,
)
from nokvpy.protocol.store_rpc import (
    BatchGetReply,
    BatchGetRequest,
    CasRequest,
    DeleteRequest,
    ExecutionStatusReply,
    ExecutionStatusRequest,
    GetReply,
    GetRequest,
    KvContext,
    OutboxReply,
    OutboxRequest,
    PutRequest,
    ReadMode,
    ScanReply,
    ScanRequest,
    WriteReply,
)
from nokvpy.raft.types import Message, MessageType
from nokvpy.replication.driver import Driver, ProposalError
from nokvpy.replication.transport import impersonated
from nokvpy.rpc import RaftTransport, RemoteError, RpcClient
from nokvpy.storage import KV, Env, LocalMeta, RaftLogStore, WriteBatch
from nokvpy.wire import DecodeError, RaftBatch, RaftEnvelope, decode, encode
from raftstore import admission as adm_mod
from raftstore.admission import AdmissionRequest, Limits, RegionView
from raftstore.apply import COMPACT_KEEP, COMPACT_SLACK, RegionStateMachine, encode_descriptor
from raftstore.commands import kv_command
from raftstore.execution import ExecutionTracker
from raftstore.outbox import OutboxRefusal
from raftstore.peer import Peer
from raftstore.peer import bootstrap as bootstrap_group
from raftstore.reads import ReadPoint, ReadRefusedError, read_barrier
from raftstore.restart import LocalImage, RestartState, derive, load_image
from raftstore.topology_tombstone import UNKNOWN_EPOCH, blocks, newer

log = logging.getLogger("nokvpy.raftstore")

INITIAL_EPOCH = RegionEpoch(1, 1)
LEADER_MESSAGES = frozenset({MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP})
OUT = ExecutionOutcome
R = AdmissionReason
# A write waiting for a proposal slot gives up this long (at most 10 % of its budget) before
# the caller's deadline, so its TIMED_OUT answer still reaches the caller.
REPLY_MARGIN = 0.1


@dataclass(slots=True)
class StoreConfig:
    store_id: int
    cluster_id: str
    address: str  # advertised host:port
    tick_interval: float = 0.1
    election_tick: int = 10
    heartbeat_tick: int = 2
    queue_limit: int = adm_mod.DEFAULT_QUEUE_LIMIT
    max_uninitialized: int = 1024
    snapshot_timeout: float = 10.0  # a sent snapshot with no answer by then is retried
    default_write_timeout: float = 30.0  # when the caller gave no deadline
    approx_keys_refresh: float = 30.0
    uninitialized_gc_after: float = 60.0  # drop a peer never initialized and unheard-of
    compact_keep: int = COMPACT_KEEP  # applied raft entries kept behind the applied index
    compact_slack: int = COMPACT_SLACK
    # TEST-ONLY deliberately broken modes for jepsen-lite's detection experiment
    # (NOKV_UNSAFE_READS=1 / NOKV_UNSAFE_ACK=1): never enable them anywhere else.
    unsafe_reads: bool = False  # linearizable reads served from local state, no ReadIndex
    unsafe_ack: bool = False  # writes acknowledged once queued, before commit


class Store:
    """One store process's execution plane. `await nursery.start(store.run)`."""

    def __init__(self, cfg: StoreConfig, env: Env, rpc: RpcClient,
                 raftlog: RaftLogStore | None = None):
        self.cfg = cfg
        self.store_id = cfg.store_id
        self.env = env
        self.rpc = rpc
        self.raftlog = raftlog if raftlog is not None else RaftLogStore(env)
        self.kv = KV(env)
        self.meta = LocalMeta(env)
        self.driver = Driver(env, self.raftlog, self._send, tick_interval=cfg.tick_interval)
        self.driver.before_persist = _fp("store.before_persist")
        self.driver.after_persist = _fp("store.after_persist_before_send")
        self.driver.before_apply = _fp("store.before_apply")
        self.driver.after_apply = _fp("store.after_apply")
        self.driver.on_role_change = self._on_role_change
        self.store_addrs: dict[int, str] = {cfg.store_id: cfg.address}
        self.transport = RaftTransport(rpc, self.store_addrs.get, cfg.store_id,
                                       on_unreachable=self._on_unreachable)
        self.peers: dict[int, Peer] = {}
        # region id -> the tombstone of the last peer destroyed here (peer id, epoch, reason)
        self.tombstones: dict[int, RegionTombstone] = {}
        # Invariant: a region id is in _destroying from the moment its peer leaves `peers`
        # until the destroy batch committed; its traffic is dropped meanwhile (a new group of
        # the same region must not share the raft storage the destroy resets).
        self._destroying: set[int] = set()
        self._reported: dict[int, int] = {}  # region id -> peer id of the last heartbeat
        self.tracker = ExecutionTracker()
        self.drops: Counter[str] = Counter()  # incoming raft messages dropped, by reason
        self.counters: Counter[str] = Counter()
        self.restart: RestartState | None = None
        self.limits = Limits(queue_limit=cfg.queue_limit)
        self.joined = False
        self.heartbeats_sent = 0
        self.last_heartbeat_error = ""
        self.outbox_backlog = 0
        self.blocked_events = 0
        self._approx: dict[int, tuple[float, int, int]] = {}  # rid -> (when, keys, bytes)
        self._creating: set[int] = set()
        self._nursery: trio.Nursery | None = None
        self.topology: Any = None  # raftstore.topology.Topology (wired by main)
        self.heartbeat_wake = trio.Event()  # set: heartbeat now rather than at the interval
        self._current_state: tuple[float, RestartState] | None = None
        # region id -> writes waiting for a proposal slot, first come first served (bounded
        # by the queue limit; see _admit_write)
        self._waiting: dict[int, deque[_Waiter]] = {}

    # ================================================================= lifecycle

    def load(self, image: LocalImage, restart: RestartState) -> None:
        """Start a peer for every region localmeta says this store hosts (restart)."""
        self.restart = restart
        self.tombstones = {rid: image.tombstone_records.get(rid) or RegionTombstone(
            rid, UNKNOWN_EPOCH, 0, "unknown") for rid in image.tombstones}
        self.outbox_backlog = len(image.outbox)
        self.blocked_events = len(image.blocked)
        for rid in restart.hosted:
            desc = image.regions[rid]
            me = desc.peer_on(self.store_id)
            ptr = image.replay[rid]
            assert me is not None
            storage = self.raftlog.group(rid)
            bootstrap = None
            if storage.is_empty() and ptr.applied_index == 0 and desc.epoch == INITIAL_EPOCH:
                bootstrap = [p.peer_id for p in desc.voters()]
            self._start_peer(rid, me.peer_id, desc, ptr.applied_index, ptr.applied_term,
                             bootstrap)
        if restart.hosted:
            log.info("store %d: rehosted %d region(s) from localmeta: %s", self.store_id,
                     len(restart.hosted), list(restart.hosted))

    def set_address(self, address: str) -> None:
        """The advertised address (known only once the listener is bound, for port 0)."""
        self.cfg.address = address
        self.store_addrs[self.store_id] = address

    def register(self, server: Any) -> None:
        server.register(RaftBatch, self.on_raft_batch, inline=True)
        server.register(GetRequest, self.on_get)
        server.register(BatchGetRequest, self.on_batch_get)
        server.register(ScanRequest, self.on_scan)
        server.register(PutRequest, self.on_put)
        server.register(DeleteRequest, self.on_delete)
        server.register(CasRequest, self.on_cas)
        server.register(ExecutionStatusRequest, self.on_execution_status)
        server.register(OutboxRequest, self.on_outbox)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.transport.run)
            await nursery.start(self.driver.run)
            nursery.start_soon(self._housekeeping)
            task_status.started()

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(0.5)
            now = trio.current_time()
            for peer in list(self.peers.values()):
                for node in peer.snapshots_stuck(now, self.cfg.snapshot_timeout):
                    self.counters["snapshots_retried"] += 1
                    if peer.group is not None:
                        self.driver.report_snapshot(peer.group, node, failed=True)
                if not peer.initialized and self._abandoned(peer, now):
                    await self._drop_uninitialized(peer)

    def _abandoned(self, peer: Peer, now: float) -> bool:
        after = self.cfg.uninitialized_gc_after
        last = peer.last_leader_contact or peer.created_at
        return now - peer.created_at > after and now - last > after / 2

    async def _drop_uninitialized(self, peer: Peer) -> None:
        """A peer created by a stray message that never learned its region: forget it (no
        tombstone: if the region really wants a replica here, its leader recreates it)."""
        rid = peer.region_id
        if self.peers.get(rid) is not peer or peer.initialized:
            return
        del self.peers[rid]
        self.driver.remove_group(rid)
        batch = WriteBatch()
        self.raftlog.stage_destroy_group(batch, rid)
        self.meta.stage_delete_replay_pointer(batch, rid)
        await self.env.commit(batch)
        self.counters["uninitialized_dropped"] += 1
        log.info("store %d: dropped uninitialized peer %d of region %d", self.store_id,
                 peer.peer_id, rid)

    # ================================================================= peers

    def _start_peer(self, rid: int, peer_id: int, desc: RegionDescriptor | None,
                    applied: int, applied_term: int, bootstrap: list[int] | None) -> Peer:
        sm = RegionStateMachine(rid, self.env, self.kv, self.meta, self.raftlog, desc,
                                applied, applied_term)
        sm.compact_keep, sm.compact_slack = self.cfg.compact_keep, self.cfg.compact_slack
        sm.spawn = self._spawn
        if self.topology is not None:
            self.topology.attach(sm)  # split / merge / membership apply handlers
        peer = Peer(rid, peer_id, self.store_id, sm, trio.current_time())
        sm.descriptor_listener = lambda d, p=peer: self._on_descriptor(p, d)
        storage = self.raftlog.group(rid)
        storage.restore_commit(applied)
        group = self.driver.add_group(rid, peer_id, storage, sm, peer.route,
                                      election_tick=self.cfg.election_tick,
                                      heartbeat_tick=self.cfg.heartbeat_tick,
                                      lazy_commit_broadcast=True)
        group.early_ack = True  # reads go through ReadIndex + the durable applied index
        if desc is not None:
            group.epoch = (desc.epoch.version, desc.epoch.conf_ver)
        peer.group = group
        if bootstrap:
            assert desc is not None
            bootstrap_group(group.node, bootstrap, encode_descriptor(desc))
        self.peers[rid] = peer
        self.counters["peers_started"] += 1
        return peer

    def _spawn(self, fn: Callable[[], Any]) -> bool:
        if self._nursery is None:
            return False
        self._nursery.start_soon(fn)
        return True

    def _on_descriptor(self, peer: Peer, desc: RegionDescriptor) -> None:
        if peer.group is not None:
            peer.group.epoch = (desc.epoch.version, desc.epoch.conf_ver)

    async def create_region(self, desc: RegionDescriptor) -> Peer | None:
        """Host `desc` (from should_host): persist it, then start (and bootstrap, when the
        region is brand new here and at its initial epoch) its peer."""
        rid = desc.region_id
        me = desc.peer_on(self.store_id)
        if me is None or rid in self.peers or rid in self._creating or \
                rid in self._destroying or self.tombstoned(rid, me.peer_id, desc.epoch):
            return self.peers.get(rid)
        self._creating.add(rid)
        try:
            storage = self.raftlog.group(rid)
            batch = WriteBatch()
            self.meta.stage_region(batch, rid, encode_descriptor(desc))
            applied = self.meta.replay_pointer(rid)
            if applied is None:
                self.meta.stage_replay_pointer(batch, rid, 0, 0)
            await self.env.commit(batch)
        finally:
            self._creating.discard(rid)
        if rid in self.peers or rid in self._destroying or \
                self.tombstoned(rid, me.peer_id, desc.epoch):
            return self.peers.get(rid)
        bootstrap = None
        if storage.is_empty() and desc.epoch == INITIAL_EPOCH and (
                applied is None or applied.applied_index == 0):
            bootstrap = [p.peer_id for p in desc.voters()]
        log.info("store %d: hosting region %d as peer %d (%s)", self.store_id, rid, me.peer_id,
                 "bootstrap" if bootstrap else "existing raft state")
        return self._start_peer(rid, me.peer_id, desc, applied.applied_index if applied else 0,
                                applied.applied_term if applied else 0, bootstrap)

    async def adopt_descriptor(self, peer: Peer, desc: RegionDescriptor) -> None:
        """An uninitialized peer learns its descriptor from the coordinator (it received raft
        entries from the start of the log instead of a snapshot).

        Only for a region whose range never changed (epoch version 1): its log starts at
        index 1 and replays into the range the descriptor names. A region created by a split
        or resized by one began its log at the range change with data not in that log; its
        peer is initialized by a snapshot or by this store's parent replica applying the
        split, never from the catalog (that gave a peer with no data a range, which then
        kept out the snapshots of its neighbours, see `_snapshot_overlaps`)."""
        if peer.initialized or desc.peer_on(self.store_id) is None:
            return
        if desc.epoch.version > 1:
            self.counters["adopt_refused_range_changed"] += 1
            return
        if desc.peer_on(self.store_id).peer_id != peer.peer_id:
            return
        sm = peer.sm
        batch = WriteBatch()
        self.meta.stage_region(batch, peer.region_id, encode_descriptor(desc))
        if sm.applied == 0 and not sm.has_staged() and self.meta.replay_pointer(
                peer.region_id) is None:
            # Submitted before any later apply batch of this region: never overwrites one.
            self.meta.stage_replay_pointer(batch, peer.region_id, 0, 0)
        await self.env.commit(batch)
        if self.peers.get(peer.region_id) is peer and not peer.initialized:
            sm.descriptor = desc
            self._on_descriptor(peer, desc)
            log.info("store %d: region %d initialized from the coordinator's descriptor",
                     self.store_id, peer.region_id)

    def _create_uninitialized(self, env: RaftEnvelope) -> Peer | None:
        rid = env.group_id
        msg = env.message
        uninit = sum(1 for p in self.peers.values() if not p.initialized)
        if uninit >= self.cfg.max_uninitialized:
            self.drops["uninitialized_limit"] += 1
            return None
        if msg.to <= 0:
            self.drops["bad_peer_id"] += 1
            return None
        log.info("store %d: creating uninitialized peer %d of region %d (message from store %d)",
                 self.store_id, msg.to, rid, env.from_store)
        self.counters["peers_created_by_message"] += 1
        return self._start_peer(rid, msg.to, None, 0, 0, None)

    def tombstoned(self, rid: int, peer_id: int, epoch: RegionEpoch | None = None) -> str:
        """Why this store's tombstone of region `rid` keeps peer `peer_id` out ("" if not)."""
        return blocks(self.tombstones.get(rid), peer_id, epoch)

    async def destroy_region(self, rid: int, reason: str, peer_id: int = 0) -> bool:
        """Remove region `rid`'s peer from this store for good (only if it is peer `peer_id`,
        when given): tombstone it at its peer id (raft traffic for it and older peers is
        dropped from now on), drop its raft state, descriptor and replay pointer, and its KV
        data unless another hosted region covers the range."""
        batch = self._stage_destroy(rid, reason, peer_id)
        if batch is None:
            return False
        await self._commit_destroy(rid, batch, reason)
        return True

    def _stage_destroy(self, rid: int, reason: str, peer_id: int) -> WriteBatch | None:
        """The in-memory part of a destroy (the peer leaves at once, its traffic is dropped
        until the batch commits) and its staged batch; None when there is nothing to do."""
        peer = self.peers.get(rid)
        if peer is None or rid in self._destroying or (peer_id and peer.peer_id != peer_id):
            return None
        del self.peers[rid]
        self.driver.remove_group(rid)
        self._destroying.add(rid)
        desc = peer.descriptor
        batch = WriteBatch()
        if desc is not None and not any(
                _overlaps(desc, p.descriptor) for p in self.peers.values()
                if p.descriptor is not None):
            self.kv.stage_delete_range(batch, desc.start_key, desc.end_key or None)
        epoch = desc.epoch if desc is not None else UNKNOWN_EPOCH
        tomb = newer(self.tombstones.get(rid), RegionTombstone(rid, epoch, peer.peer_id, reason))
        self.tombstones[rid] = tomb
        self.meta.stage_tombstone(batch, rid, encode(tomb))
        self.meta.stage_delete_region(batch, rid)
        self.meta.stage_delete_replay_pointer(batch, rid)
        self.raftlog.stage_destroy_group(batch, rid)
        return batch

    async def _commit_destroy(self, rid: int, batch: WriteBatch, reason: str) -> None:
        try:
            await self.env.commit(batch)
        finally:
            self._destroying.discard(rid)
        log.info("store %d: region %d removed (%s)", self.store_id, rid, reason)
        self.counters["regions_destroyed"] += 1

    # ================================================================= raft traffic

    async def on_raft_batch(self, batch: RaftBatch, ctx: Any) -> None:
        """Inline handler: gate each envelope and hand it to the driver. Never blocks."""
        if batch.to_store != self.store_id:
            self.drops["wrong_store"] += len(batch.envelopes)
            return None
        if impersonated(batch, ctx):  # a store sending as another store
            self.drops["impersonated_sender"] += len(batch.envelopes)
            return None
        for env in batch.envelopes:
            if env.from_store != batch.from_store:
                self.drops["impersonated_sender"] += 1
                continue
            self.on_envelope(env)
        return None

    def on_envelope(self, env: RaftEnvelope) -> None:
        drops = self.drops
        if env.to_store != self.store_id:
            drops["wrong_store"] += 1
            return
        rid = env.group_id
        msg: Message = env.message
        if rid <= 0:
            drops["bad_region_id"] += 1
            return
        if rid in self._destroying:
            drops["destroying"] += 1
            return
        peer = self.peers.get(rid)
        if peer is None:
            if self.tombstoned(rid, msg.to, RegionEpoch(env.epoch_version, env.epoch_conf_ver)):
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
        if not self.driver.step(rid, msg):
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
            self.drops["wrong_peer"] += 1
            return
        if self._nursery is None:
            self.drops["wrong_peer"] += 1
            return
        reason = (f"stale peer {peer.peer_id}: store {env.from_store} leads region "
                  f"{peer.region_id} with peer {env.message.to} here at epoch v{ev}/c{ec}")
        batch = self._stage_destroy(peer.region_id, reason, peer.peer_id)
        if batch is None:
            self.drops["wrong_peer"] += 1
            return
        self.drops["stale_peer_replaced"] += 1
        self.counters["stale_peers_destroyed"] += 1
        log.info("store %d: %s", self.store_id, reason)
        self._nursery.start_soon(self._commit_destroy, peer.region_id, batch, reason)

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
                   and p.descriptor.state != RegionState.MERGING and _overlaps(d, p.descriptor)
                   for p in self.peers.values())

    def _send(self, out: list[tuple[int, int, Message, tuple[int, int]]]) -> None:
        envs: list[RaftEnvelope] = []
        me = self.store_id
        peers = self.peers
        for gid, to, msg, epoch in out:
            peer = peers.get(gid)
            store = peer.route(to) if peer is not None else None
            if store is None:
                self.counters["send_unroutable"] += 1
                continue
            if msg.type == MessageType.SNAP:
                peer.snapshots_sent[to] = trio.current_time()
                self.counters["snapshots_sent"] += 1
            envs.append(RaftEnvelope(gid, me, store, epoch[0], epoch[1], msg))
        if envs:
            self.transport.send(envs)

    def _on_unreachable(self, store_id: int) -> None:
        for peer in self.peers.values():
            group = peer.group
            if group is None or not group.is_leader:
                continue
            desc = peer.descriptor
            if desc is None:
                continue
            for p in desc.peers:
                if p.store_id == store_id:
                    self.driver.report_unreachable(group, p.peer_id)
                    if peer.snapshots_sent.pop(p.peer_id, None) is not None:
                        self.driver.report_snapshot(group, p.peer_id, failed=True)

    def _on_role_change(self, group: Any) -> None:
        self.counters["role_changes"] += 1
        self._wake_waiter(group.group_id)  # a write waiting for a slot may now be NOT_LEADER
        if group.is_leader:
            self.heartbeat_wake.set()  # tell the coordinators about a new leader early

    # ================================================================= admission

    def _views(self, rid: int, now: float) -> dict[int, RegionView]:
        peer = self.peers.get(rid)
        return {} if peer is None else {rid: peer.view(now)}

    def _decide(self, cls: AdmissionClass, kvctx: KvContext | None, deadline: float, *,
                keys: tuple[bytes, ...] = (), values: tuple[bytes | None, ...] = (),
                scan_start: bytes | None = None, scan_limit: int | None = None,
                ahead: int = 0) -> Admission:
        """The admission decision now, not recorded. `ahead`: writes waiting for a slot of
        the region before this one (they count against its queue limit)."""
        now = trio.current_time()
        rid = kvctx.region_id if isinstance(kvctx, KvContext) else 0
        views = self._views(rid, now)
        if ahead and rid in views:
            views = {rid: replace(views[rid], queue_depth=views[rid].queue_depth + ahead)}
        req = AdmissionRequest(cls, kvctx, keys, values, scan_start, scan_limit, deadline)
        return adm_mod.admit(req, self.store_id, views, now, self.limits)

    def admit(self, cls: AdmissionClass, kvctx: KvContext | None, deadline: float, *,
              keys: tuple[bytes, ...] = (), values: tuple[bytes | None, ...] = (),
              scan_start: bytes | None = None, scan_limit: int | None = None) -> Admission:
        return self.tracker.admitted(self._decide(
            cls, kvctx, deadline, keys=keys, values=values, scan_start=scan_start,
            scan_limit=scan_limit))

    async def _admit_write(self, kvctx: KvContext, deadline: float, keys: tuple[bytes, ...],
                           values: tuple[bytes | None, ...]) -> Admission:
        """Admission of a write. When the region has `queue_limit` proposals in flight the
        write waits for a slot, first come first served, in a line of at most `queue_limit`
        writes per region (a write finding the line full is QUEUE_SATURATED at once). A
        waiting write is answered TIMED_OUT shortly before its deadline (so the answer still
        reaches the caller), and recorded CANCELED when the caller cancels it."""
        rid = kvctx.region_id if isinstance(kvctx, KvContext) else 0
        line = self._waiting.get(rid)
        ahead = len(line) if line else 0
        adm = self._decide(AdmissionClass.WRITE, kvctx, deadline, keys=keys, values=values,
                           ahead=ahead)
        if adm.reason != R.QUEUE_SATURATED:
            return self.tracker.admitted(adm)
        limit = self.limits.queue_limit
        if ahead >= limit:
            return self.tracker.admitted(replace(
                adm, detail=f"region {rid} has {self._in_flight(rid)} proposals in flight and "
                            f"{ahead} writes waiting for a slot (limit {limit} each)"))
        return await self._wait_for_slot(rid, kvctx, deadline, keys, values)

    async def _wait_for_slot(self, rid: int, kvctx: KvContext, deadline: float,
                             keys: tuple[bytes, ...], values: tuple[bytes | None, ...]
                             ) -> Admission:
        start = trio.current_time()
        end = deadline if deadline != float("inf") else start + self.cfg.default_write_timeout
        give_up = end - min(REPLY_MARGIN, max(0.0, end - start) * 0.1)
        line = self._waiting.setdefault(rid, deque())
        me = _Waiter()
        line.append(me)
        self.counters["writes_waited_for_slot"] += 1
        try:
            while True:
                with trio.move_on_at(give_up):
                    await me.wake.wait()
                    me.wake = trio.Event()
                    adm = self._decide(AdmissionClass.WRITE, kvctx, deadline, keys=keys,
                                       values=values, ahead=line.index(me))
                    if adm.reason != R.QUEUE_SATURATED:
                        return self.tracker.admitted(adm)
                    continue
                waited = trio.current_time() - start
                return self.tracker.admitted(Admission(
                    AdmissionClass.WRITE, R.TIMED_OUT,
                    f"waited {waited:.2f}s behind {self._in_flight(rid)} proposals in flight "
                    f"on region {rid} (queue limit {self.limits.queue_limit}); answered "
                    "before the request's deadline", **self._leader_hints(rid)))
        except trio.Cancelled:
            waited = trio.current_time() - start
            self.tracker.admitted(Admission(
                AdmissionClass.WRITE, R.CANCELED,
                f"the caller cancelled the write after it waited {waited:.2f}s for a "
                f"proposal slot on region {rid}"))
            raise
        finally:
            line.remove(me)
            if not line and self._waiting.get(rid) is line:
                del self._waiting[rid]
            self._wake_waiter(rid)

    def _wake_waiter(self, rid: int) -> None:
        """A slot of region `rid` may be free (or its leadership changed): the first write
        waiting for one looks again."""
        line = self._waiting.get(rid)
        if line:
            line[0].wake.set()

    def _in_flight(self, rid: int) -> int:
        peer = self.peers.get(rid)
        return peer.in_flight if peer is not None else 0

    def _leader_hints(self, rid: int) -> dict[str, int]:
        peer = self.peers.get(rid)
        if peer is None:
            return {}
        return {"leader_peer_id": peer.leader_peer_id, "leader_store_id": peer.leader_store_id()}

    def set_scheduler_degraded(self, degraded: bool) -> None:
        """The publish outbox is failing (or recovered): topology admissions follow."""
        self.limits = Limits(self.limits.queue_limit, degraded)

    @staticmethod
    def rejection(adm: Admission) -> RemoteError:
        return RemoteError("rejected", adm.reason.name, adm.detail, {"admission": adm})

    def _refuse(self, cls: AdmissionClass, reason: AdmissionReason, detail: str,
                peer: Peer | None = None) -> RemoteError:
        hints: dict[str, Any] = {}
        if peer is not None:
            hints = {"leader_peer_id": peer.leader_peer_id,
                     "leader_store_id": peer.leader_store_id()}
            if reason in (R.EPOCH_MISMATCH, R.KEY_NOT_IN_REGION) and peer.descriptor:
                hints["current_epoch"] = peer.descriptor.epoch
                hints["descriptor"] = peer.descriptor
        adm = self.tracker.admitted(Admission(cls, reason, detail, **hints))
        return self.rejection(adm)

    # ================================================================= reads

    async def _read(self, kvctx: KvContext, ctx: Any, keys: tuple[bytes, ...], *,
                    scan_start: bytes | None = None, scan_limit: int | None = None):
        deadline = _deadline(ctx)
        adm = self.admit(AdmissionClass.READ, kvctx, deadline, keys=keys, scan_start=scan_start,
                         scan_limit=scan_limit)
        if not adm.accepted:
            self.tracker.outcomes["REJECTED"] += 1
            raise self.rejection(adm)
        peer = self.peers[kvctx.region_id]
        try:
            if self.cfg.unsafe_reads and kvctx.read_mode == ReadMode.LINEARIZABLE:
                point = ReadPoint(peer.sm.applied)  # TEST-ONLY broken mode: no barrier
            else:
                point = await read_barrier(self.driver, peer, kvctx.read_mode, deadline)
        except ReadRefusedError as exc:
            self.tracker.outcomes["FAILED"] += 1
            raise self._refuse(AdmissionClass.READ, exc.reason, exc.detail, peer) from None
        desc = peer.descriptor
        if self.peers.get(kvctx.region_id) is not peer or desc is None:
            raise self._refuse(AdmissionClass.READ, R.NOT_HOSTED,
                               f"region {kvctx.region_id} was removed during the read")
        if desc.epoch.version != kvctx.epoch.version:  # the range moved (see admission)
            raise self._refuse(AdmissionClass.READ, R.EPOCH_MISMATCH,
                               f"region {desc.region_id} moved to epoch {desc.epoch} during "
                               "the read", peer)
        self.tracker.outcomes["APPLIED"] += 1
        return peer, point

    async def on_get(self, req: GetRequest, ctx: Any) -> GetReply:
        peer, point = await self._read(req.ctx, ctx, (req.key,))
        return GetReply(peer.sm.get(req.key), point.read_index, point.stale_by_index,
                        point.stale_by_ms)

    async def on_batch_get(self, req: BatchGetRequest, ctx: Any) -> BatchGetReply:
        keys = tuple(req.keys) if isinstance(req.keys, list | tuple) else ()
        if not keys:
            raise self._refuse(AdmissionClass.READ, R.INVALID, "batch get needs keys")
        peer, point = await self._read(req.ctx, ctx, keys)
        return BatchGetReply(peer.sm.batch_get(list(keys)), point.read_index)

    async def on_scan(self, req: ScanRequest, ctx: Any) -> ScanReply:
        peer, point = await self._read(req.ctx, ctx, (), scan_start=req.start_key,
                                       scan_limit=req.limit)
        pairs, more = peer.sm.scan(req.start_key, req.end_key, req.limit)
        return ScanReply(pairs, more, point.read_index)

    # ================================================================= writes

    async def on_put(self, req: PutRequest, ctx: Any) -> WriteReply:
        return await self._write(req.ctx, ctx, (req.key,), (req.value,),
                                 [KvOp(KvOpKind.PUT, req.key, req.value)])

    async def on_delete(self, req: DeleteRequest, ctx: Any) -> WriteReply:
        return await self._write(req.ctx, ctx, (req.key,), (),
                                 [KvOp(KvOpKind.DELETE, req.key)])

    async def on_cas(self, req: CasRequest, ctx: Any) -> WriteReply:
        return await self._write(req.ctx, ctx, (req.key,), (req.new_value, req.expected),
                                 [KvOp(KvOpKind.CAS, req.key, req.new_value, req.expected)])

    async def _write(self, kvctx: KvContext, ctx: Any, keys: tuple[bytes, ...],
                     values: tuple[bytes | None, ...], ops: list[KvOp]) -> WriteReply:
        deadline = _deadline(ctx)
        adm = await self._admit_write(kvctx, deadline, keys, values)
        if not adm.accepted:
            self.tracker.outcomes["REJECTED"] += 1
            raise self.rejection(adm)
        rid = kvctx.region_id
        peer = self.peers[rid]
        desc = peer.descriptor
        assert desc is not None and peer.group is not None
        tracker = self.tracker
        target = tracker.new_target("write", rid)
        tracker.advance(target, OUT.QUEUED)
        data = kv_command(rid, desc.epoch, ops)
        if deadline == float("inf"):
            deadline = trio.current_time() + self.cfg.default_write_timeout
        if self.cfg.unsafe_ack and self._nursery is not None:
            # TEST-ONLY broken mode: acknowledge before the write is even committed.
            self._nursery.start_soon(_propose_quietly, self.driver, peer.group, data)
            tracker.advance(target, OUT.PROPOSED, "unsafe ack")
            return WriteReply(peer.sm.applied, True, None)
        result: Any = None
        index = 0
        peer.in_flight += 1
        try:
            with trio.move_on_at(deadline):
                tracker.advance(target, OUT.PROPOSED)
                index, result = await self.driver.propose_at(
                    peer.group, data,
                    on_commit=lambda _index: tracker.advance(target, OUT.COMMITTED))
        except ProposalError as exc:
            tracker.advance(target, OUT.FAILED, f"{exc.reason}: {exc}")
            if exc.reason == "stopped":
                raise self._refuse(AdmissionClass.WRITE, R.NOT_HOSTED, str(exc)) from None
            # not_leader / dropped / refused: known not applied, so safe to retry elsewhere.
            raise self._refuse(AdmissionClass.WRITE, R.NOT_LEADER, str(exc), peer) from None
        finally:
            peer.in_flight -= 1
            self._wake_waiter(rid)
        if result is None:
            tracker.advance(target, OUT.FAILED, "deadline passed after proposing")
            self.counters["writes_outcome_unknown"] += 1
            raise RemoteError("timeout", "outcome_unknown",
                              f"the deadline passed after the write was proposed to region "
                              f"{rid}; it may or may not apply",
                              {"region_id": rid, "target": target.id})
        if not isinstance(result, KvResult) or not result.ok:
            err = getattr(result, "error", "invalid")
            tracker.advance(target, OUT.FAILED, err)
            reason = {"epoch_mismatch": R.EPOCH_MISMATCH,
                      "key_not_in_region": R.KEY_NOT_IN_REGION}.get(err, R.INVALID)
            raise self._refuse(AdmissionClass.WRITE, reason,
                               f"write refused at apply: {err}", peer)
        tracker.advance(target, OUT.APPLIED)
        return WriteReply(index, result.succeeded, result.current)

    # ================================================================= heartbeat

    async def refresh_region_stats(self) -> None:
        """Recount keys and bytes of regions whose count is older than the refresh interval,
        in a worker thread (a full range scan must not stall the event loop)."""
        now = trio.current_time()
        for rid in sorted(self.peers):
            peer = self.peers.get(rid)
            desc = peer.descriptor if peer is not None else None
            cached = self._approx.get(rid)
            if desc is None or (cached and now - cached[0] < self.cfg.approx_keys_refresh):
                continue
            keys, size = await trio.to_thread.run_sync(
                self.kv.range_stats, desc.start_key, desc.end_key or None)
            self._approx[rid] = (trio.current_time(), keys, size)

    def current_state(self) -> RestartState:
        """The restart state derived again from localmeta now: what a restart would find.
        `restart` keeps the state found at start; this one clears once the causes are gone
        (outbox drained, blocked events resolved, a region rebuilt). Re-read at most once a
        second, and at once when the outbox or blocked table changed size (level-triggered:
        a drained outbox or a resolved blocked entry shows in the next answer)."""
        now = trio.current_time()
        cached = self._current_state
        if cached is not None and now - cached[0] < 1.0:
            try:
                same = (len(self.meta.outbox()), len(self.meta.blocked())) == (
                    cached[1].outbox_backlog, cached[1].blocked_events)
            except Exception:  # noqa: BLE001 - a sick store re-derives (and reports why)
                same = False
            if same:
                return cached[1]
        try:
            state = derive(load_image(self.meta, self.raftlog))
        except Exception as exc:  # status must answer even on a sick store
            log.exception("store %d: re-deriving the restart state failed", self.store_id)
            state = RestartState(RestartStateKind.FATAL, ("read_failed",),
                                 message=f"reading localmeta failed: {exc}")
        self._current_state = (now, state)
        return state

    def heartbeat_request(self) -> StoreHeartbeatRequest:
        regions = []
        for rid in sorted(self.peers):
            peer = self.peers[rid]
            _, keys, size = self._approx.get(rid, (0.0, 0, 0))
            hb = peer.heartbeat(keys, size)
            if hb is not None:
                regions.append(hb)
        # the reply's `tombstoned` is about these peers, not later ones created meanwhile
        self._reported = {hb.region_id: hb.peer_id for hb in regions}
        state = self.current_state().kind.name if self.restart is not None else "READY"
        if self.topology is not None:
            regions = self.topology.annotate(regions)
        return StoreHeartbeatRequest(self.store_id, self.cfg.address, regions, state,
                                     self.outbox_backlog, self.blocked_events)

    async def on_heartbeat_reply(self, reply: StoreHeartbeatReply) -> None:
        if reply.store_addrs:
            for sid, addr in reply.store_addrs.items():
                if sid != self.store_id and addr:
                    self.store_addrs[sid] = addr
        for desc in reply.should_host or ():
            rid = desc.region_id
            me = desc.peer_on(self.store_id)
            if me is None or self.tombstoned(rid, me.peer_id, desc.epoch):
                continue
            peer = self.peers.get(rid)
            if peer is None:
                if desc.epoch == INITIAL_EPOCH:
                    await self.create_region(desc)
                else:
                    self.counters["should_host_waiting_for_leader"] += 1
            elif not peer.initialized:
                await self.adopt_descriptor(peer, desc)
        for rid in reply.tombstoned or ():
            # Only the peer this store reported: a later peer of the region created since
            # (added here again) is not what the coordinator judged.
            pid = self._reported.get(rid, 0)
            if pid and not await self.destroy_region(rid, "tombstoned by the coordinator", pid):
                self.counters["tombstone_for_a_replaced_peer"] += 1
        if self.topology is not None:
            await self.topology.on_heartbeat_reply(reply)  # scheduler operations, epoch
        elif reply.operations:
            self.counters["operations_ignored"] += len(reply.operations)

    # ================================================================= status

    def status(self) -> dict[str, Any]:
        leaders = sum(1 for p in self.peers.values() if p.is_leader)
        restart = self.restart.as_dict() if self.restart is not None else {}
        if restart:
            restart["outbox_backlog"] = self.outbox_backlog
            restart["blocked_events"] = self.blocked_events
        regions = {}
        for rid in sorted(self.peers):
            p = self.peers[rid]
            d = p.descriptor
            regions[str(rid)] = {
                "peer_id": p.peer_id,
                "initialized": d is not None,
                "epoch": [d.epoch.version, d.epoch.conf_ver] if d else [],
                "leader": p.is_leader,
                "leader_peer_id": p.leader_peer_id,
                "applied_index": p.sm.applied,
                "commit_index": p.commit_index(),
                "in_flight": p.in_flight,
                "state": d.state.name if d else "",
            }
        tracker = self.tracker.status()
        outbox = []
        try:
            outbox = [_outbox_entry(seq, ev) for seq, ev in self.meta.outbox()[:100]]
        except Exception as exc:  # status must answer even on a sick store
            outbox = [{"error": str(exc)}]
        return {
            "store_id": self.store_id,
            "address": self.cfg.address,
            "joined": self.joined,
            "region_count": len(self.peers),
            "leader_count": leaders,
            "restart_state": restart,
            "current_state": self.current_state().as_dict() if self.restart is not None else {},
            "last_admission": tracker["last_admission"],
            "admissions": tracker["admissions"],
            "outcomes": tracker["outcomes"],
            "recent_targets": tracker["recent_targets"],
            "queue_depths": {str(rid): p.in_flight for rid, p in sorted(self.peers.items())
                             if p.in_flight},
            "queue_limit": self.limits.queue_limit,
            "queue_waiters": {str(rid): len(line) for rid, line in sorted(self._waiting.items())
                              if line},
            "proposal_queue": len(self.driver._proposals),
            "drops": dict(sorted(self.drops.items())),
            "counters": dict(sorted(self.counters.items())),
            "driver": dict(sorted(self.driver.counters.items())),
            "transport": dict(sorted(self.transport.counters.items())),
            "storage": self._storage_status(),
            "transitions": tracker["transitions"],
            "outbox": outbox,
            "tombstones": sorted(self.tombstones),
            "tombstoned_peers": {str(rid): t.peer_id
                                 for rid, t in sorted(self.tombstones.items())},
            "heartbeats_sent": self.heartbeats_sent,
            "last_heartbeat_error": self.last_heartbeat_error,
            "regions": regions,
            "topology": self.topology.status() if self.topology is not None else {},
        }

    def _storage_status(self) -> dict[str, Any]:
        """LMDB commits and, in WAL mode, the raft log's write-ahead log."""
        es = self.env.stats
        out: dict[str, Any] = {"lmdb": {"transactions": es.transactions, "batches": es.batches,
                                        "sync_ms": int(es.sync_seconds * 1000)}}
        wal = self.raftlog.wal
        if wal is not None:
            ws = wal.stats
            out["wal"] = {"fsyncs": ws.appends, "frames": ws.frames, "bytes": ws.bytes,
                          "sync_ms": int(ws.sync_seconds * 1000), "rotations": ws.rotations,
                          "torn_bytes": ws.torn_bytes, "stalls": ws.stalls,
                          "segments": wal.segment_count,
                          "segment_bytes": wal.size, "durable_lsn": wal.durable_lsn}
        return out

    async def on_execution_status(self, req: ExecutionStatusRequest, ctx: Any
                                  ) -> ExecutionStatusReply:
        body = self.status()
        if req.region_id:
            body["regions"] = {k: v for k, v in body["regions"].items()
                               if k == str(req.region_id)}
        if req.transition_id:
            body["transitions"] = {k: v for k, v in body["transitions"].items()
                                   if k == req.transition_id}
        return ExecutionStatusReply(body)

    async def on_outbox(self, req: OutboxRequest, ctx: Any) -> OutboxReply:
        """The operator path of the publish outbox (raftstore.outbox): list, retry or
        resolve a blocked entry. A request that cannot be carried out is refused INVALID and
        changes nothing."""
        publisher = getattr(self.topology, "publisher", None)
        if publisher is None:
            raise self._refuse(AdmissionClass.TOPOLOGY, R.INVALID,
                               f"store {self.store_id} runs no outbox publisher")
        detail = ""
        try:
            if req.action == "retry":
                detail = await publisher.retry_blocked(req.seq)
            elif req.action == "resolve":
                detail = await publisher.resolve_blocked(req.seq, req.resolution, req.reason)
            elif req.action != "list":
                raise OutboxRefusal(f"unknown outbox action {req.action!r}: expected list, "
                                    "retry or resolve")
        except OutboxRefusal as exc:
            raise self._refuse(AdmissionClass.TOPOLOGY, R.INVALID, str(exc)) from None
        if req.action != "list":
            self._current_state = None  # the tables changed: derive the state again now
        body: dict[str, Any] = dict(publisher.status())
        body["store_id"] = self.store_id
        body["current_state"] = (self.current_state().as_dict() if self.restart is not None
                                 else {})
        return OutboxReply(req.action, detail, body)


class _Waiter:
    """A write waiting for a proposal slot of its region."""

    __slots__ = ("wake",)

    def __init__(self) -> None:
        self.wake = trio.Event()


async def _propose_quietly(driver: Driver, group: Any, data: bytes) -> None:
    try:
        await driver.propose(group, data)
    except ProposalError:
        pass


def _outbox_entry(seq: int, event: bytes) -> dict[str, Any]:
    try:
        kind = type(decode(event)).__name__
    except DecodeError:
        kind = "undecodable"
    return {"seq": seq, "bytes": len(event), "record": kind}


def _fp(name: str) -> Callable[[], None]:
    def hook() -> None:
        failpoints.check(name)

    return hook


def _deadline(ctx: Any) -> float:
    d = getattr(ctx, "deadline", None)
    return float("inf") if d is None else d


def _overlaps(a: RegionDescriptor, b: RegionDescriptor) -> bool:
    return ((not a.end_key or a.end_key > b.start_key)
            and (not b.end_key or b.end_key > a.start_key))
