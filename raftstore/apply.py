"""The KV state machine of one region: committed raft entries -> LMDB writes.

Owns: interpreting a region's entry payloads (`KvCommand`, `AdminCommand`), the in-batch
overlay (a later entry of the same batch sees the writes of an earlier one), staging the
replay pointer (applied index, term) into the SAME write batch as the data it covers (so
replay after a crash is idempotent), snapshots of the region (descriptor + KV range + applied
index; built in a worker thread and cached) and their installation, and raft log compaction
behind the applied index. Never awaits on the apply path and never commits: the driver
commits the batch; in-memory views change only in `after_commit`.

Apply-time rules: a command proposed under an older region version (a split or merge
happened since) or touching a key outside the region is refused as a whole (nothing written);
a CAS command writes only if every CAS predicate holds. Invalid payloads are refused, never
raised: an apply must never fail the batch that persists other groups' work. Transactions,
range deletes (raftstore.txnapply) and lease sweeps (raftstore.leaseapply) are refused here
when stale and otherwise applied there, in the entry's batch, against this batch's overlay.
Every write is recorded in the region's change log (raftstore.changelog) when it has one.

Modification indexes: with a `VersionedKV` (what a store gives its regions; raftstore.kvformat)
every value is stored behind a header naming the entry that last wrote it (region id, raft
index) and the lease it lives by, if any. With a plain storage `KV` (tests of this module and
of the driver) values are stored as they are; mod compares and leases are refused.

TEST-ONLY: `NOKV_UNSAFE_APPLY_FLIP=1` in a store's environment (read once, at import) makes
ONE store (id `NOKV_UNSAFE_APPLY_FLIP_STORE`, default 3) flip the lowest bit of the last byte
of every 50th put value its replicas apply (a PUT, or a CAS that writes), in what it writes and
what later entries see: a silently diverged replica, for jepsen-lite's convergence check to
catch. The store logs a loud warning when it is on. Never set it anywhere else.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from nokvpy.protocol import RegionDescriptor, RegionState
from nokvpy.protocol.leases import LeaseSweepCommand
from nokvpy.protocol.raftstore_cmds import (
    AdminCommand,
    KvCommand,
    KvOpKind,
    KvResult,
    RegionSnapshot,
)
from nokvpy.protocol.store_rpc import (
    MAX_DELETE_RANGE_KEYS,
    MAX_VALUE_SIZE,
    DeleteRangeCommand,
    TxnCommand,
)
from nokvpy.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    Snapshot,
    SnapshotTemporarilyUnavailableError,
)
from nokvpy.storage import KV, Env, LeaseIndex, LocalMeta, RaftLogStore, WriteBatch
from nokvpy.wire import DecodeError, decode, encode
from raftstore import commands as _commands  # noqa: F401  (installs the fast entry codec)
from raftstore.changelog import RecordingOverlay, RegionChanges
from raftstore.kvformat import (
    INVALID,
    KEY_NOT_IN_REGION,
    VersionedKV,
    in_range,
    pack_stored,
    unpack_stored,
    valid_key,
)
from raftstore.leaseapply import apply_sweep, restore_lease_index
from raftstore.txnapply import (
    RangeDeleteResult,
    TxnResult,
    apply_delete_range,
    apply_txn,
    txn_read_keys,
)

log = logging.getLogger("nokvpy.raftstore.apply")

_MISSING = object()

# Raft log compaction: keep this many applied entries, compact in steps of at least SLACK.
COMPACT_KEEP = 2048
COMPACT_SLACK = 1024

SNAPSHOT_CACHE_TTL = 60.0  # seconds a built snapshot is offered again

# TEST-ONLY deliberately broken apply (see the module docstring); never enable it elsewhere.
UNSAFE_APPLY_FLIP = os.environ.get("NOKV_UNSAFE_APPLY_FLIP", "") not in ("", "0")
UNSAFE_APPLY_FLIP_STORE = int(os.environ.get("NOKV_UNSAFE_APPLY_FLIP_STORE", "") or 3)
UNSAFE_APPLY_FLIP_EVERY = 50


def unsafe_apply_flip_on(store_id: int) -> bool:
    """Whether store `store_id` damages applied puts (`NOKV_UNSAFE_APPLY_FLIP=1`, test-only)."""
    return UNSAFE_APPLY_FLIP and store_id == UNSAFE_APPLY_FLIP_STORE


OK = KvResult(True)
EPOCH_MISMATCH = "epoch_mismatch"
AdminHandler = Callable[["RegionStateMachine", WriteBatch, Entry, AdminCommand], Any]


def encode_descriptor(desc: RegionDescriptor) -> bytes:
    return encode(desc)


def decode_descriptor(raw: bytes) -> RegionDescriptor:
    desc = decode(raw)
    if not isinstance(desc, RegionDescriptor):
        raise DecodeError(f"expected a RegionDescriptor, got {type(desc).__name__}")
    return desc


class RegionStateMachine:
    """Applies one region's committed entries (the driver's `StateMachine` protocol)."""

    def __init__(
        self,
        region_id: int,
        env: Env,
        kv: KV,
        meta: LocalMeta,
        raftlog: RaftLogStore,
        descriptor: RegionDescriptor | None,
        applied_index: int = 0,
        applied_term: int = 0,
    ):
        self.region_id = region_id
        self.env = env
        self.kv = kv
        # Values carry their modification index (VersionedKV) or are stored as they are.
        self.versioned = isinstance(kv, VersionedKV)
        self.meta = meta
        self.raftlog = raftlog
        # None while the peer is uninitialized (created by a message, waiting for a snapshot).
        self.descriptor = descriptor
        # Invariant: (applied, applied_term) is what meta_replay holds durably for the region.
        self.applied = applied_index
        self.applied_term = applied_term
        # The log at or before this index must not be replayed by another replica (the
        # driver's storage answers CompactedError for it, so the leader sends a snapshot):
        # it was written under an older range or membership of the region. On this store the
        # keys it touched may belong to another region now (after a split), a merge's source
        # data is not in it at all, and its membership changes are relative to descriptors a
        # new peer never had. The index of the last epoch change (version or conf_ver) this
        # replica applied; after a restart of a region whose epoch ever changed, the applied
        # index (conservative: a snapshot where a replay would have been safe).
        self.replay_floor = applied_index if (
            descriptor is not None and (descriptor.epoch.version > 1
                                        or descriptor.epoch.conf_ver > 1)) else 0
        self.writes_since_heartbeat = 0
        self.total_writes = 0
        self.snapshots_built = 0
        self.snapshots_installed = 0
        self.compactions = 0
        self.compact_keep, self.compact_slack = COMPACT_KEEP, COMPACT_SLACK
        # Extension points for topology (split / merge / peer change): op -> handler, and a
        # callback on committed membership changes.
        self.admin_handlers: dict[str, AdminHandler] = {}
        self.conf_change_listener: Callable[[ConfChange, ConfState], None] | None = None
        # Topology: stages the descriptor change a membership conf change entry carries
        # (raftstore.topology.apply); its result goes to the proposer.
        self.conf_change_handler: Callable[[RegionStateMachine, WriteBatch, Entry], Any] | None = None
        self.descriptor_listener: Callable[[RegionDescriptor], None] | None = None
        # Applies staged and not yet durable, oldest first: (last index, term, descriptor,
        # writes). More than one only when the driver holds plain applies back (WAL mode):
        # `_pending` then maps each key they wrote to its value (None: deleted), so a CAS
        # staged after them reads what they wrote. Cleared when the last one is durable.
        self._staged: deque[tuple[int, int, RegionDescriptor | None, int]] = deque()
        self._pending = RecordingOverlay()
        # The region's change log (raftstore.changelog), for watches; None: not recorded.
        self.changes: RegionChanges | None = None
        # The store's lease index (keys written with a lease); None: leases are refused.
        self.leases: LeaseIndex | None = None
        self._plain = False
        # Background snapshot building: `spawn(async_fn)` starts a task and says whether it
        # could (None, or False: build inline).
        self.spawn: Callable[[Callable[[], Any]], bool] | None = None
        self._snap_cache: tuple[int, bytes, float] | None = None
        self._snap_building = False
        # A descriptor change staged by an admin handler (applied on commit).
        self.staged_descriptor: RegionDescriptor | None = None
        # TEST-ONLY (NOKV_UNSAFE_APPLY_FLIP): damage every UNSAFE_APPLY_FLIP_EVERY-th put.
        self.unsafe_flip = False
        self.unsafe_puts = 0

    # ---- driver protocol -------------------------------------------------------------

    def applied_index(self) -> int:
        return self.applied

    def stage_apply(self, batch: WriteBatch, entries: list[Entry]) -> list[Any]:
        self.staged_descriptor = None
        decoded: list[Any] = []
        read_keys: list[bytes] = []  # keys whose current value an entry of the batch reads
        for e in entries:
            cmd: Any = None
            if e.type == EntryType.NORMAL and e.data:
                try:
                    cmd = decode(e.data)
                except DecodeError as exc:
                    log.warning("region %d: undecodable entry %d: %s", self.region_id, e.index, exc)
                    cmd = exc
                else:
                    if isinstance(cmd, KvCommand):
                        for op in cmd.ops:
                            if op.kind == KvOpKind.CAS and valid_key(op.key):
                                read_keys.append(op.key)
                    elif isinstance(cmd, TxnCommand):
                        read_keys.extend(txn_read_keys(cmd))
                    elif isinstance(cmd, LeaseSweepCommand) and isinstance(cmd.keys, list):
                        read_keys.extend(k for k in cmd.keys if valid_key(k))
            elif (e.type == EntryType.CONF_CHANGE and self.descriptor is None
                  and self.staged_descriptor is None):
                self.staged_descriptor = self._descriptor_from_conf_change(e)
            decoded.append(cmd)
        plain = self.staged_descriptor is None
        base = self._prefetch(read_keys) if read_keys else {}
        overlay = self._pending
        changes = self.changes
        results: list[Any] = []
        writes = 0
        for e, cmd in zip(entries, decoded, strict=True):
            if cmd is None:
                if (e.type == EntryType.CONF_CHANGE and self.conf_change_handler is not None
                        and (self.staged_descriptor or self.descriptor) is not None):
                    results.append(self.conf_change_handler(self, batch, e))
                else:
                    results.append(None)  # conf change or the leader's empty entry
                if e.type != EntryType.NORMAL:
                    plain = False
            elif isinstance(cmd, KvCommand | TxnCommand | DeleteRangeCommand
                            | LeaseSweepCommand):
                if changes is not None:
                    overlay.log = []
                if isinstance(cmd, KvCommand):
                    res = self._apply_kv(batch, cmd, e.index, overlay, base)
                    if res.ok and res.succeeded:
                        writes += len(cmd.ops)
                    results.append(res)
                elif isinstance(cmd, TxnCommand):
                    txn_res = self._apply_txn(batch, cmd, e.index, overlay, base)
                    writes += txn_res.writes
                    results.append(txn_res)
                elif isinstance(cmd, LeaseSweepCommand):
                    results.append(self._apply_sweep(batch, cmd, overlay, base))
                else:
                    range_res = self._apply_delete_range(batch, cmd, overlay)
                    writes += range_res.deleted
                    results.append(range_res)
                if changes is not None:
                    if overlay.log:
                        desc = self.staged_descriptor or self.descriptor
                        assert desc is not None  # a write applied: the region has a range
                        changes.record(batch, desc.epoch.version, e.index, overlay.log,
                                       lambda raw: self._unpack(raw)[0])
                    overlay.log = None
            elif isinstance(cmd, AdminCommand):
                plain = False
                handler = self.admin_handlers.get(cmd.op)
                if handler is None:
                    results.append(KvResult(False, error=f"unsupported admin op {cmd.op!r}"))
                else:
                    results.append(handler(self, batch, e, cmd))
            else:
                results.append(KvResult(False, error=INVALID))
        last = entries[-1]
        self.meta.stage_replay_pointer(batch, self.region_id, last.index, last.term)
        if changes is not None:
            desc = self.staged_descriptor or self.descriptor
            if desc is not None:
                changes.applied(batch, desc.epoch.version, last.index)
        if self.staged_descriptor is not None:
            self.meta.stage_region(batch, self.region_id, encode_descriptor(self.staged_descriptor))
        if self._maybe_compact(batch):
            plain = False
        self._staged.append((last.index, last.term, self.staged_descriptor, writes))
        self._plain = plain
        return results

    # The driver may stage this region's next apply while earlier ones are still held back
    # (`_pending` serves their writes to CAS).
    stages_ahead = True

    def apply_deferrable(self) -> bool:
        """Did the last stage_apply write only KV data and the replay pointer (no descriptor,
        admin command, membership change or compaction)? Then the driver may hold its batch
        back to share the next fsync: replaying it after a crash is idempotent."""
        return self._plain

    def staged_index(self) -> int:
        """The last index whose apply is staged (acknowledged writes included), durable or
        not; the applied index while a staged apply changes the descriptor."""
        staged = self._staged
        if not staged or any(desc is not None for _, _, desc, _ in staged):
            return self.applied
        return staged[-1][0]

    def has_staged(self) -> bool:
        """Is an apply staged whose batch has not committed yet?"""
        return bool(self._staged)

    def after_commit(self, entries: list[Entry], results: list[Any]) -> None:
        if not self._staged:
            return
        staged = self._staged.popleft()
        if not self._staged:
            self._pending.clear()
        if self.changes is not None:  # the head moves: waiting watches read again
            self.changes.after_commit(drained=not self._staged)
        self.applied, self.applied_term, desc, writes = staged
        self.writes_since_heartbeat += writes
        self.total_writes += writes
        if desc is not None:
            old = self.descriptor
            if old is None or old.epoch != desc.epoch:
                self.replay_floor = max(self.replay_floor, self.applied)
                self._snap_cache = None  # built under the old range or membership
            self.descriptor = desc
            self.staged_descriptor = None
            if self.descriptor_listener is not None:
                self.descriptor_listener(desc)

    def snapshot(self) -> tuple[int, bytes]:
        """A snapshot for a lagging follower. With a `spawn` runner installed, snapshots are
        built in a worker thread (a whole region must not be read and encoded on the event
        loop): the first request starts a build and answers "temporarily unavailable"; raft
        asks again on the follower's next response and gets the cached image, which stays
        usable while the log still holds every entry after it."""
        if self.descriptor is None:
            raise SnapshotTemporarilyUnavailableError(
                f"region {self.region_id} is not initialized here")
        cache = self._snap_cache
        if cache is not None:
            index, data, built_at = cache
            floor = self.raftlog.group(self.region_id).first_index() - 1
            # Not from before the last epoch change either: a region snapshot built under an
            # older range overlaps the regions split off since, on the follower's store too,
            # which refuses it (`RaftTraffic._snapshot_overlaps`) for as long as it is offered.
            if index >= max(floor, self.replay_floor) and \
                    trio.current_time() - built_at < SNAPSHOT_CACHE_TTL:
                return index, data
            self._snap_cache = None
        if not self._snap_building:
            if self.spawn is None or not self.spawn(self._build_snapshot_async):
                return self._build_snapshot()
            self._snap_building = True
        raise SnapshotTemporarilyUnavailableError(
            f"region {self.region_id}: snapshot is being built")

    async def _build_snapshot_async(self) -> None:
        try:
            index, data = await trio.to_thread.run_sync(self._build_snapshot)
            self._snap_cache = (index, data, trio.current_time())
        except SnapshotTemporarilyUnavailableError:
            pass
        except Exception:
            log.exception("region %d: building a snapshot failed", self.region_id)
        finally:
            self._snap_building = False

    def _build_snapshot(self) -> tuple[int, bytes]:
        """Read the replay pointer and the region's KV range in one read transaction."""
        desc = self.descriptor
        if desc is None:
            raise SnapshotTemporarilyUnavailableError(f"region {self.region_id} has no range")
        kv, meta, rid = self.kv, self.meta, self.region_id

        changes = self.changes

        def read(txn):  # the change log travels with the data it describes
            return (meta.replay_pointer(rid, txn=txn),
                    kv.export_range(desc.start_key, desc.end_key or None, txn=txn),
                    *(changes.snapshot(txn) if changes is not None else (None, None)))

        ptr, pairs, log, floor = self.env.read(read)
        if ptr is None or ptr.applied_index == 0:
            raise SnapshotTemporarilyUnavailableError(f"region {rid} has applied nothing yet")
        self.snapshots_built += 1
        data = encode(RegionSnapshot(desc, ptr.applied_index, ptr.applied_term, pairs,
                                     log if floor is not None else None, floor))
        return ptr.applied_index, data

    def stage_restore(self, batch: WriteBatch, snapshot: Snapshot) -> None:
        snap = decode(snapshot.data)
        if not isinstance(snap, RegionSnapshot) or snap.descriptor.region_id != self.region_id:
            # A snapshot is only sent by our own group's leader: this is a bug, not input.
            raise ValueError(f"region {self.region_id}: snapshot payload is not ours")
        desc = snap.descriptor
        old = self.descriptor
        if old is not None and (old.start_key, old.end_key) != (desc.start_key, desc.end_key):
            self.kv.stage_delete_range(batch, old.start_key, old.end_key or None)
        self.kv.stage_import_range(batch, desc.start_key, desc.end_key or None, snap.pairs)
        if self.leases is not None:
            restore_lease_index(batch, self.leases, desc, snap.pairs)
        index, term = snapshot.metadata.index, snapshot.metadata.term
        self.meta.stage_region(batch, self.region_id, encode_descriptor(desc))
        self.meta.stage_replay_pointer(batch, self.region_id, index, term)
        if self.changes is not None:
            self.changes.restore(batch, desc.epoch.version, index, snap.changes, snap.change_floor)

        def installed() -> None:
            self.descriptor = desc
            self.applied, self.applied_term = index, term
            self.snapshots_installed += 1
            if self.descriptor_listener is not None:
                self.descriptor_listener(desc)

        batch.on_commit(installed)

    def on_conf_change(self, cc: ConfChange, conf_state: ConfState) -> None:
        self._snap_cache = None  # it was taken under the old membership
        if self.conf_change_listener is not None:
            self.conf_change_listener(cc, conf_state)

    # ---- helpers ---------------------------------------------------------------------

    def _descriptor_from_conf_change(self, e: Entry) -> RegionDescriptor | None:
        """A founding entry carries the region descriptor (see `peer.bootstrap`): a peer
        replaying the log from index 1 learns its descriptor there."""
        try:
            ctx = ConfChange.decode(e.data).context
            desc = decode_descriptor(ctx) if ctx else None
        except (ValueError, DecodeError):
            return None
        if desc is None or desc.region_id != self.region_id:
            return None
        return desc

    def _prefetch(self, keys: list[bytes]) -> dict[bytes, bytes | None]:
        """The stored bytes of `keys` in LMDB, from one read transaction."""
        get = self._get_stored

        def read(txn):
            return {k: get(k, txn=txn) for k in keys}

        return self.env.read(read)

    def _get_stored(self, key: bytes, *, txn: Any = None) -> bytes | None:
        kv = self.kv
        return kv.get_stored(key, txn=txn) if isinstance(kv, VersionedKV) else kv.get(key, txn=txn)

    def _stored(self, value: bytes, index: int) -> bytes:
        """What LMDB holds for `value` written by entry `index` of this region."""
        return pack_stored(value, self.region_id, index) if self.versioned else value

    def _unpack(self, raw: bytes) -> tuple[bytes, int, int]:
        return unpack_stored(raw) if self.versioned else (raw, 0, 0)

    def _current(self, key: bytes, overlay: dict[bytes, Any],
                 base: dict[bytes, bytes | None]) -> bytes | None:
        """The stored bytes of `key` as this apply sees them (None: missing): a write staged
        earlier (this batch, or one held back), else the prefetch, else LMDB."""
        current = overlay.get(key, _MISSING)
        if current is _MISSING:
            current = base.get(key, _MISSING)
            if current is _MISSING:
                current = self._get_stored(key)
        return current

    def _epoch_refusal(self, region_id: int, version: int) -> tuple[RegionDescriptor | None, str]:
        """(the region's descriptor, "") when a command proposed under `version` of
        `region_id` may apply now, else (None, the error)."""
        desc = self.staged_descriptor or self.descriptor
        if desc is None or region_id != self.region_id:
            return None, EPOCH_MISMATCH
        if version != desc.epoch.version or desc.state != RegionState.RUNNING:
            return None, EPOCH_MISMATCH  # (a frozen merge source: MERGING)
        return desc, ""

    def _apply_kv(self, batch: WriteBatch, cmd: KvCommand, index: int,
                  overlay: dict[bytes, Any], base: dict[bytes, bytes | None]) -> KvResult:
        desc, err = self._epoch_refusal(cmd.region_id, cmd.epoch.version)
        if desc is None:
            return KvResult(False, error=err)
        ops = cmd.ops
        for op in ops:
            if not valid_key(op.key):
                return KvResult(False, error=INVALID)
            if op.value is not None and len(op.value) > MAX_VALUE_SIZE:
                return KvResult(False, error=INVALID)
            if op.lease and (op.kind != KvOpKind.PUT or not self.versioned
                             or self.leases is None or not 0 < op.lease < 1 << 63):
                return KvResult(False, error=INVALID)  # only a store's puts carry a lease
            if not in_range(desc, op.key):
                return KvResult(False, error=KEY_NOT_IN_REGION)
        for op in ops:
            if op.kind == KvOpKind.CAS:
                raw = self._current(op.key, overlay, base)
                current = None if raw is None else self._unpack(raw)[0]
                if current != op.expected:
                    return KvResult(True, succeeded=False, current=current)
            elif op.kind not in (KvOpKind.PUT, KvOpKind.DELETE):
                return KvResult(False, error=INVALID)
        kv_db = "kv"
        for op in ops:
            kind = op.kind
            if kind == KvOpKind.PUT or (kind == KvOpKind.CAS and op.value is not None):
                value = self._flipped(op.value) if self.unsafe_flip else op.value
                if op.lease:
                    raw = pack_stored(value, self.region_id, index, op.lease)
                    assert self.leases is not None
                    self.leases.stage_attach(batch, op.lease, op.key)
                else:
                    raw = self._stored(value, index)
                overlay[op.key] = raw
                batch.put(kv_db, op.key, raw)
            else:  # DELETE, or a CAS to None
                overlay[op.key] = None
                batch.delete(kv_db, op.key)
        return OK

    def _flipped(self, value: bytes) -> bytes:
        """TEST-ONLY (NOKV_UNSAFE_APPLY_FLIP): every UNSAFE_APPLY_FLIP_EVERY-th put value
        with the lowest bit of its last byte flipped; the others as they are."""
        self.unsafe_puts += 1
        if not value or self.unsafe_puts % UNSAFE_APPLY_FLIP_EVERY:
            return value
        return value[:-1] + bytes([value[-1] ^ 0x01])  # a plausible wrong value

    def _apply_txn(self, batch: WriteBatch, cmd: TxnCommand, index: int,
                   overlay: dict[bytes, Any], base: dict[bytes, bytes | None]) -> TxnResult:
        """Refused when stale; else `txnapply.apply_txn` against this apply's state."""
        desc, err = self._epoch_refusal(cmd.region_id, cmd.epoch.version)
        if desc is None:
            return TxnResult(False, error=err)
        return apply_txn(batch, cmd, index, desc, overlay, versioned=self.versioned,
                         current=lambda key: self._current(key, overlay, base),
                         unpack=self._unpack, stored=self._stored)

    def _apply_sweep(self, batch: WriteBatch, cmd: LeaseSweepCommand,
                     overlay: dict[bytes, Any], base: dict[bytes, bytes | None]) -> KvResult:
        """Refused when stale; else `leaseapply.apply_sweep` against this apply's state."""
        desc, err = self._epoch_refusal(cmd.region_id, cmd.epoch.version)
        if desc is None:
            return KvResult(False, error=err)
        return apply_sweep(batch, cmd, desc, overlay, self.leases,
                           lambda key: self._current(key, overlay, base))

    def _apply_delete_range(self, batch: WriteBatch, cmd: DeleteRangeCommand,
                            overlay: dict[bytes, Any]) -> RangeDeleteResult:
        """Refused when stale; else `txnapply.apply_delete_range` on this region's keys."""
        desc, err = self._epoch_refusal(cmd.region_id, cmd.epoch.version)
        if desc is None:
            return RangeDeleteResult(False, error=err)
        # the cap per entry is read here, at apply time (tests lower it on this module)
        return apply_delete_range(batch, cmd, desc, overlay, self.env, MAX_DELETE_RANGE_KEYS)

    def _maybe_compact(self, batch: WriteBatch) -> bool:
        """Compact the raft log to `compact_keep` entries behind the durable applied index
        (only entries already applied and durable, so the batch's own appends are untouched)."""
        storage = self.raftlog.group(self.region_id)
        target = self.applied - self.compact_keep
        if target <= 0 or target - storage.first_index() + 1 < self.compact_slack:
            return False
        if target > storage.last_index():
            return False
        self.raftlog.stage_compact(batch, self.region_id, target)
        self.compactions += 1
        return True

    # ---- reads -------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        return self.kv.get(key)

    def batch_get(self, keys: list[bytes]) -> list[bytes | None]:
        kv = self.kv
        return self.env.read(lambda txn: [kv.get(k, txn=txn) for k in keys])

    def scan(self, start: bytes, end: bytes, limit: int) -> tuple[list[tuple[bytes, bytes]], bool]:
        """Pairs in [max(start, region start), min(end, region end)), at most `limit`;
        `more` says whether the clipped range holds further keys."""
        pairs, more, _ = self.scan_page(start, end, limit)
        return pairs, more

    def scan_page(self, start: bytes, end: bytes, limit: int
                  ) -> tuple[list[tuple[bytes, bytes]], bool, bytes]:
        """`scan`, plus the first key in range not returned (b"" unless `more`)."""
        desc = self.descriptor
        assert desc is not None
        lo = max(start, desc.start_key)
        hi = desc.end_key
        if end and (not hi or end < hi):
            hi = end
        if hi and lo >= hi:
            return [], False, b""
        pairs = self.kv.scan(lo, hi or None, limit + 1)
        if len(pairs) > limit:
            return pairs[:limit], True, pairs[limit][0]
        return pairs, False, b""
