"""The store: many region peers on one ready-loop driver, and the KV / admin RPC handlers.

Owns: the hosted peer table (created from the coordinator's `should_host` for initial
regions, from raft messages for unknown regions, from localmeta on restart), region removal
(tombstones), admission of every request (`decide` / `admit`, and `refuse`: every refusal
after admission is built by raftstore.admission and recorded), execution tracking, the
heartbeat's region reports and the handling of its replies, and the wiring of the pieces it
delegates to: the raft traffic gate and outgoing routing (raftstore.traffic, every drop
counted by reason), the KV read and write paths with the line of writes waiting for a
proposal slot (raftstore.kvpath), the `ExecutionStatus` body, the outbox operator RPC and
the `RegionDigest` RPC (raftstore.status), waking hibernating followers whose leader's store
is gone (raftstore.hibernation). It is the `StoreContext` of the topology runtime.

Peers are (region id, peer id): a tombstone keeps out the peer it destroyed and older ones,
not a later peer of the same region (`raftstore.topology.tombstone`); a leader message for a
later peer id than the one hosted here means the hosted one was removed without learning it:
it is destroyed (tombstoned at its id) and the next message creates the new one; the
coordinator's `tombstoned` answer applies to the peer the heartbeat reported, never to a later
one. Never lets static configuration decide what it hosts, never writes to LMDB outside
`env.commit` batches, and never answers a refusal without an `Admission` reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import trio

from nokvpy import failpoints
from nokvpy.protocol import (
    Admission,
    AdmissionClass,
    AdmissionReason,
    RegionDescriptor,
    RegionEpoch,
)
from nokvpy.protocol.backup import RegionExportRequest
from nokvpy.protocol.coordinator_rpc import StoreHeartbeatReply, StoreHeartbeatRequest
from nokvpy.protocol.leases import LeaseAliveRequest, LeaseKeepAliveRequest
from nokvpy.protocol.raftstore_cmds import RegionTombstone
from nokvpy.protocol.store_rpc import (
    BatchGetReply,
    BatchGetRequest,
    CasRequest,
    DeleteRangeRequest,
    DeleteRequest,
    ExecutionStatusReply,
    ExecutionStatusRequest,
    GetReply,
    GetRequest,
    KvContext,
    OutboxReply,
    OutboxRequest,
    PutRequest,
    RegionDigestReply,
    RegionDigestRequest,
    ScanReply,
    ScanRequest,
    TxnRequest,
    WriteReply,
)
from nokvpy.protocol.watch import KvWatchRequest
from nokvpy.replication.driver import Driver
from nokvpy.rpc import RaftTransport, RemoteError, RpcClient
from nokvpy.storage import ChangeTable, Env, LeaseIndex, LocalMeta, RaftLogStore, WriteBatch
from nokvpy.wire import RaftBatch, RaftEnvelope, encode
from raftstore import admission as adm_mod
from raftstore.admission import AdmissionRequest, Limits
from raftstore.apply import (
    COMPACT_KEEP,
    COMPACT_SLACK,
    UNSAFE_APPLY_FLIP,
    UNSAFE_APPLY_FLIP_EVERY,
    UNSAFE_APPLY_FLIP_STORE,
    RegionStateMachine,
    VersionedKV,
    encode_descriptor,
    unsafe_apply_flip_on,
)
from raftstore.changelog import WATCH_KEEP, RegionChanges
from raftstore.execution import ExecutionTracker
from raftstore.exportpath import ExportPath
from raftstore.hibernation import watch_leaders
from raftstore.kvpath import KvPath
from raftstore.leases import LeaseService
from raftstore.peer import Peer
from raftstore.peer import bootstrap as bootstrap_group
from raftstore.restart import LocalImage, RestartState
from raftstore.status import StoreStatus
from raftstore.topology.tombstone import UNKNOWN_EPOCH, blocks, newer
from raftstore.traffic import RaftTraffic, overlaps
from raftstore.watchpath import WatchPath

log = logging.getLogger("nokvpy.raftstore")

INITIAL_EPOCH = RegionEpoch(1, 1)


@dataclass(slots=True)
class StoreConfig:
    store_id: int
    cluster_id: str
    address: str  # advertised host:port
    tick_interval: float = 0.1
    election_tick: int = 10
    heartbeat_tick: int = 2
    hibernate_tick: int = 20  # idle ticks before a region stops ticking (0: never)
    queue_limit: int = adm_mod.DEFAULT_QUEUE_LIMIT
    max_uninitialized: int = 1024
    snapshot_timeout: float = 10.0  # a sent snapshot with no answer by then is retried
    default_write_timeout: float = 30.0  # when the caller gave no deadline
    approx_keys_refresh: float = 30.0
    uninitialized_gc_after: float = 60.0  # drop a peer never initialized and unheard-of
    compact_keep: int = COMPACT_KEEP  # applied raft entries kept behind the applied index
    compact_slack: int = COMPACT_SLACK
    watch_keep: int = WATCH_KEEP  # indexes of changes a region keeps for watches (0: none)
    # TEST-ONLY broken modes for jepsen-lite (NOKV_UNSAFE_READS=1 / NOKV_UNSAFE_ACK=1)
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
        self.kv = VersionedKV(env)  # values carry their modification index
        self.changes = ChangeTable(env)  # each region's recent writes, for watches
        self.lease_index = LeaseIndex(env)  # which keys were written with which lease
        self.leases = LeaseService(self)  # authority and sweeper (its link: set_link)
        self.meta = LocalMeta(env)
        self.traffic = RaftTraffic(self)
        self.kvpath = KvPath(self)
        self.watchpath = WatchPath(self)
        self.exportpath = ExportPath(self)
        self.reporter = StoreStatus(self)
        self.driver = Driver(env, self.raftlog, self.traffic.send,
                             tick_interval=cfg.tick_interval)
        self.driver.before_persist = _fp("store.before_persist")
        self.driver.after_persist = _fp("store.after_persist_before_send")
        self.driver.before_apply = _fp("store.before_apply")
        self.driver.after_apply = _fp("store.after_apply")
        self.driver.on_role_change = self._on_role_change
        self.store_addrs: dict[int, str] = {cfg.store_id: cfg.address}
        self.transport = RaftTransport(rpc, self.store_addrs.get, cfg.store_id,
                                       on_unreachable=self.traffic.on_unreachable)
        self.peers: dict[int, Peer] = {}
        # region id -> the tombstone of the last peer destroyed here (peer id, epoch, reason)
        self.tombstones: dict[int, RegionTombstone] = {}
        # Invariant: a region id is in `destroying` from the moment its peer leaves `peers`
        # until the destroy batch committed; its traffic is dropped meanwhile (a new group of
        # the same region must not share the raft storage the destroy resets).
        self.destroying: set[int] = set()
        self._reported: dict[int, int] = {}  # region id -> peer id of the last heartbeat
        self.tracker = ExecutionTracker()
        self.drops: Counter[str] = Counter()  # incoming raft messages dropped, by reason
        self.counters: Counter[str] = Counter()
        self.restart: RestartState | None = None
        self.limits = Limits(queue_limit=cfg.queue_limit)
        self.joined = False
        self.retired = False  # the coordinators refuse it as retired (raftstore.heartbeat)
        self.heartbeats_sent = 0
        self.last_heartbeat_error = ""
        self.outbox_backlog = 0
        self.blocked_events = 0
        self._approx: dict[int, tuple[float, int, int]] = {}  # rid -> (when, keys, bytes)
        self._creating: set[int] = set()
        self._nursery: trio.Nursery | None = None
        self.topology: Any = None  # raftstore.topology.service.Topology (wired by main)
        self.heartbeat_wake = trio.Event()  # set: heartbeat now rather than at the interval
        # TEST-ONLY (NOKV_UNSAFE_APPLY_FLIP=1, raftstore.apply): this store damages applied
        # put values, so that the replica-convergence check can show it catches it.
        self.unsafe_apply_flip = unsafe_apply_flip_on(cfg.store_id)
        if UNSAFE_APPLY_FLIP:
            log.warning(
                "store %d: NOKV_UNSAFE_APPLY_FLIP=1: TEST-ONLY UNSAFE MODE, store %d flips a "
                "bit of the last byte of every %dth applied put value (%s)", cfg.store_id,
                UNSAFE_APPLY_FLIP_STORE, UNSAFE_APPLY_FLIP_EVERY,
                "THIS store: its replicas will diverge" if self.unsafe_apply_flip
                else "not this store")

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
            self.start_peer(rid, me.peer_id, desc, ptr.applied_index, ptr.applied_term,
                             bootstrap)
        if restart.hosted:
            log.info("store %d: rehosted %d region(s) from localmeta: %s", self.store_id,
                     len(restart.hosted), list(restart.hosted))

    def set_address(self, address: str) -> None:
        """The advertised address (known only once the listener is bound, for port 0)."""
        self.cfg.address = address
        self.store_addrs[self.store_id] = address

    def register(self, server: Any) -> None:
        server.register(RaftBatch, self.traffic.on_raft_batch, inline=True)
        server.register(GetRequest, self.on_get)
        server.register(KvWatchRequest, self.watchpath.on_watch)
        server.register(LeaseKeepAliveRequest, self.leases.on_keep_alive)
        server.register(LeaseAliveRequest, self.leases.on_alive)
        server.register(RegionExportRequest, self.exportpath.on_export)
        server.register(BatchGetRequest, self.on_batch_get)
        server.register(ScanRequest, self.on_scan)
        server.register(PutRequest, self.on_put)
        server.register(DeleteRequest, self.on_delete)
        server.register(CasRequest, self.on_cas)
        server.register(TxnRequest, self.kvpath.on_txn)
        server.register(DeleteRangeRequest, self.kvpath.on_delete_range)
        server.register(ExecutionStatusRequest, self.on_execution_status)
        server.register(OutboxRequest, self.on_outbox)
        server.register(RegionDigestRequest, self.on_region_digest)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.transport.run)
            await nursery.start(self.driver.run)
            nursery.start_soon(self._housekeeping)
            nursery.start_soon(watch_leaders, self)  # wakes sleeping followers of a lost leader
            await nursery.start(self.leases.run)
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
        after, last = self.cfg.uninitialized_gc_after, peer.last_leader_contact or peer.created_at
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

    def start_peer(self, rid: int, peer_id: int, desc: RegionDescriptor | None,
                    applied: int, applied_term: int, bootstrap: list[int] | None) -> Peer:
        sm = RegionStateMachine(rid, self.env, self.kv, self.meta, self.raftlog, desc,
                                applied, applied_term)
        sm.compact_keep, sm.compact_slack = self.cfg.compact_keep, self.cfg.compact_slack
        sm.spawn = self.spawn
        sm.unsafe_flip = self.unsafe_apply_flip
        if self.cfg.watch_keep > 0:
            sm.changes = RegionChanges(self.changes, rid, self.cfg.watch_keep)
        sm.leases = self.lease_index
        if self.topology is not None:
            self.topology.attach(sm)  # split / merge / membership apply handlers
        peer = Peer(rid, peer_id, self.store_id, sm, trio.current_time())
        sm.descriptor_listener = lambda d, p=peer: self._on_descriptor(p, d)
        storage = self.raftlog.group(rid)
        storage.restore_commit(applied)
        group = self.driver.add_group(rid, peer_id, storage, sm, peer.route,
                                      election_tick=self.cfg.election_tick,
                                      heartbeat_tick=self.cfg.heartbeat_tick,
                                      lazy_commit_broadcast=True,
                                      hibernate_tick=self.cfg.hibernate_tick)
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

    @property
    def running(self) -> bool:
        return self._nursery is not None

    def spawn(self, fn: Callable[[], Any]) -> bool:
        """Run `fn` in the store's nursery (False, not run, when the store is not running)."""
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
                rid in self.destroying or self.tombstoned(rid, me.peer_id, desc.epoch):
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
        if rid in self.peers or rid in self.destroying or \
                self.tombstoned(rid, me.peer_id, desc.epoch):
            return self.peers.get(rid)
        bootstrap = None
        if storage.is_empty() and desc.epoch == INITIAL_EPOCH and (
                applied is None or applied.applied_index == 0):
            bootstrap = [p.peer_id for p in desc.voters()]
        log.info("store %d: hosting region %d as peer %d (%s)", self.store_id, rid, me.peer_id,
                 "bootstrap" if bootstrap else "existing raft state")
        return self.start_peer(rid, me.peer_id, desc, applied.applied_index if applied else 0,
                                applied.applied_term if applied else 0, bootstrap)

    async def adopt_descriptor(self, peer: Peer, desc: RegionDescriptor) -> None:
        """An uninitialized peer learns its descriptor from the coordinator (it received raft
        entries from the start of the log instead of a snapshot).

        Only for a region still at its founding epoch (INITIAL_EPOCH): its log starts at
        index 1 and replays into the range and membership the descriptor names. Once the
        epoch changed, the leader sends an empty-log peer a snapshot (`replay_floor`), and
        the catalog's descriptor is not the one the old entries apply to:
        - a split child began its log at the split with data not in that log; given the
          catalog's range, a peer with no data kept out its neighbours' snapshots (see
          `RaftTraffic._snapshot_overlaps`), and neither region recovered;
        - a re-added peer replaying old membership changes onto the current descriptor
          counted conf_ver past the region's, and built terminal events root refuses for
          good (its outbox stayed blocked).
        Such a peer is initialized by a snapshot, or by this store's parent replica applying
        the split."""
        if peer.initialized or desc.peer_on(self.store_id) is None:
            return
        if desc.epoch != INITIAL_EPOCH:
            self.counters["adopt_refused_epoch_changed"] += 1
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

    def tombstoned(self, rid: int, peer_id: int, epoch: RegionEpoch | None = None) -> str:
        """Why this store's tombstone of region `rid` keeps peer `peer_id` out ("" if not)."""
        return blocks(self.tombstones.get(rid), peer_id, epoch)

    async def destroy_region(self, rid: int, reason: str, peer_id: int = 0) -> bool:
        """Remove region `rid`'s peer from this store for good (only if it is peer `peer_id`,
        when given): tombstone it at its peer id (raft traffic for it and older peers is
        dropped from now on), drop its raft state, descriptor and replay pointer, and its KV
        data unless another hosted region covers the range."""
        batch = self.stage_destroy(rid, reason, peer_id)
        if batch is None:
            return False
        await self.commit_destroy(rid, batch, reason)
        return True

    def stage_destroy(self, rid: int, reason: str, peer_id: int) -> WriteBatch | None:
        """The in-memory part of a destroy (the peer leaves at once, its traffic is dropped
        until the batch commits) and its staged batch; None when there is nothing to do."""
        peer = self.peers.get(rid)
        if peer is None or rid in self.destroying or (peer_id and peer.peer_id != peer_id):
            return None
        del self.peers[rid]
        self.driver.remove_group(rid)
        self.destroying.add(rid)
        desc = peer.descriptor
        batch = WriteBatch()
        if desc is not None and not any(
                overlaps(desc, p.descriptor) for p in self.peers.values()
                if p.descriptor is not None):
            self.kv.stage_delete_range(batch, desc.start_key, desc.end_key or None)
        epoch = desc.epoch if desc is not None else UNKNOWN_EPOCH
        tomb = newer(self.tombstones.get(rid), RegionTombstone(rid, epoch, peer.peer_id, reason))
        self.tombstones[rid] = tomb
        self.meta.stage_tombstone(batch, rid, encode(tomb))
        self.meta.stage_delete_region(batch, rid)
        self.meta.stage_delete_replay_pointer(batch, rid)
        self.raftlog.stage_destroy_group(batch, rid)
        self.changes.stage_drop(batch, rid)
        return batch

    async def commit_destroy(self, rid: int, batch: WriteBatch, reason: str) -> None:
        try:
            await self.env.commit(batch)
        finally:
            self.destroying.discard(rid)
        log.info("store %d: region %d removed (%s)", self.store_id, rid, reason)
        self.counters["regions_destroyed"] += 1

    # ================================================================= raft traffic

    def on_envelope(self, env: RaftEnvelope) -> None:
        self.traffic.on_envelope(env)

    def _on_role_change(self, group: Any) -> None:
        self.counters["role_changes"] += 1
        self.kvpath.wake(group.group_id)  # a write waiting for a slot may now be NOT_LEADER
        if group.is_leader:
            self.heartbeat_wake.set()  # tell the coordinators about a new leader early

    # ================================================================= admission

    def decide(self, cls: AdmissionClass, kvctx: KvContext | None, deadline: float, *,
               keys: tuple[bytes, ...] = (), values: tuple[bytes | None, ...] = (),
               scan_start: bytes | None = None, scan_limit: int | None = None,
               ahead: int = 0) -> Admission:
        """The admission decision now, not recorded. `ahead`: writes waiting for a slot of
        the region before this one (they count against its queue limit)."""
        now = trio.current_time()
        rid = kvctx.region_id if isinstance(kvctx, KvContext) else 0
        peer = self.peers.get(rid)
        views = {} if peer is None else {rid: peer.view(now)}
        if ahead and rid in views:
            views = {rid: replace(views[rid], queue_depth=views[rid].queue_depth + ahead)}
        req = AdmissionRequest(cls, kvctx, keys, values, scan_start, scan_limit, deadline)
        return adm_mod.admit(req, self.store_id, views, now, self.limits)

    def admit(self, cls: AdmissionClass, kvctx: KvContext | None, deadline: float, *,
              keys: tuple[bytes, ...] = (), values: tuple[bytes | None, ...] = (),
              scan_start: bytes | None = None, scan_limit: int | None = None) -> Admission:
        """The admission decision now, recorded."""
        return self.tracker.admitted(self.decide(
            cls, kvctx, deadline, keys=keys, values=values, scan_start=scan_start,
            scan_limit=scan_limit))

    def refuse(self, cls: AdmissionClass, reason: AdmissionReason, detail: str,
               peer: Peer | None = None) -> RemoteError:
        """Refuse a request after admission (built by raftstore.admission with the hints of
        `peer`'s region, and recorded)."""
        view = peer.view(trio.current_time()) if peer is not None else None
        return adm_mod.rejection(self.tracker.admitted(adm_mod.refusal(cls, reason, detail,
                                                                       view)))

    # ================================================================= reads and writes

    async def on_get(self, req: GetRequest, ctx: Any) -> GetReply:
        return await self.kvpath.on_get(req, ctx)

    async def on_batch_get(self, req: BatchGetRequest, ctx: Any) -> BatchGetReply:
        return await self.kvpath.on_batch_get(req, ctx)

    async def on_scan(self, req: ScanRequest, ctx: Any) -> ScanReply:
        return await self.kvpath.on_scan(req, ctx)

    async def on_put(self, req: PutRequest, ctx: Any) -> WriteReply:
        return await self.kvpath.on_put(req, ctx)

    async def on_delete(self, req: DeleteRequest, ctx: Any) -> WriteReply:
        return await self.kvpath.on_delete(req, ctx)

    async def on_cas(self, req: CasRequest, ctx: Any) -> WriteReply:
        return await self.kvpath.on_cas(req, ctx)

    @property
    def _waiting(self) -> dict[int, Any]:
        """The writes waiting for a proposal slot, per region (raftstore.kvpath)."""
        return self.kvpath.waiting

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

    def current_state(self) -> RestartState:
        """The restart state a restart would find now (raftstore.status)."""
        return self.reporter.current_state()

    def status(self) -> dict[str, Any]:
        """The `ExecutionStatus` body (raftstore.status)."""
        return self.reporter.body()

    async def on_execution_status(self, req: ExecutionStatusRequest, ctx: Any
                                  ) -> ExecutionStatusReply:
        return await self.reporter.on_execution_status(req, ctx)

    async def on_outbox(self, req: OutboxRequest, ctx: Any) -> OutboxReply:
        return await self.reporter.on_outbox(req, ctx)

    async def on_region_digest(self, req: RegionDigestRequest, ctx: Any) -> RegionDigestReply:
        return await self.reporter.on_region_digest(req, ctx)


def _fp(name: str) -> Callable[[], None]:
    def hook() -> None:
        failpoints.check(name)

    return hook
