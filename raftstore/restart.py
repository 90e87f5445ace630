"""RestartState: what a store may serve after a restart, derived from localmeta only.

Owns: reading localmeta into a `LocalImage` (one read transaction, no write, corruption
captured rather than raised) and the pure derivation `derive(image, expected)` ->
`RestartState` (DESIGN 5, reference 3.3). Static configuration never enters the derivation:
which regions this store hosts comes from its durable hosted-region table, never from flags.

Rules:
- FATAL: localmeta fails its checksums or cannot be decoded, a stored descriptor names
  another region than its key, or the stamped identity differs from the one requested. The
  store must not start (and must not write): one clear message.
- DEGRADED: a hosted region has no replay pointer, or a pointer past a raft log that is gone
  (it is not started: its applied state cannot be trusted, it needs a local rebuild from a
  leader snapshot first; it is listed in `missing_replay_pointer`), a hosted region
  is also tombstoned at its peer id or a later one (`raftstore.topology.tombstone`: the
  tombstone of an older peer does not count, the region was added here again) or names no
  peer on this store (not started), the publish outbox has a backlog, or blocked events
  exist (the store must catch up with the coordinator).
- READY otherwise.
`needs`: "none" (fresh store), "coordinator_catch_up" (report and reconcile only), or
"local_rebuild" (some region must be rebuilt before it can serve).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nokvpy.protocol import RegionDescriptor, RestartStateKind
from nokvpy.protocol.raftstore_cmds import RegionTombstone
from nokvpy.storage import (
    BlockedEvent,
    CorruptMetadataError,
    LocalMeta,
    RaftLogStore,
    ReplayPointer,
    StoreIdentity,
)
from nokvpy.wire import DecodeError, decode
from raftstore.topology.tombstone import blocks, decode_tombstone

NEEDS_NONE = "none"
NEEDS_CATCH_UP = "coordinator_catch_up"
NEEDS_REBUILD = "local_rebuild"

# The format of a store's values, stamped with its identity on first start. 1: raw values
# (stores stamped before formats were recorded); 2: each value behind the header of
# raftstore.kvformat's stored-value format (the region and raft index that wrote it: txn mod
# compares). A store never reads another format's values as its own.
LEGACY_DATA_FORMAT = 1
DATA_FORMAT = 2


@dataclass(slots=True, frozen=True)
class LocalImage:
    """Everything restart derivation reads, decoded (or the corruption that stopped it)."""

    identity: StoreIdentity | None = None
    regions: dict[int, RegionDescriptor] = field(default_factory=dict)
    replay: dict[int, ReplayPointer] = field(default_factory=dict)
    tombstones: frozenset[int] = frozenset()
    # the decoded records of `tombstones` (a region without one: every peer is blocked)
    tombstone_records: dict[int, RegionTombstone] = field(default_factory=dict)
    outbox: tuple[tuple[int, bytes], ...] = ()
    blocked: tuple[BlockedEvent, ...] = ()
    raft_groups: frozenset[int] | None = None  # groups with persisted raft state (None: unknown)
    corruption: str = ""
    data_format: int | None = None  # stamped with the identity (None: before formats were)


@dataclass(slots=True, frozen=True)
class RestartState:
    kind: RestartStateKind
    reasons: tuple[str, ...] = ()
    hosted: tuple[int, ...] = ()  # regions to start, ascending
    missing_replay_pointer: tuple[int, ...] = ()
    not_started: tuple[int, ...] = ()  # hosted in localmeta but not started (see reasons)
    outbox_backlog: int = 0
    blocked_events: int = 0
    needs: str = NEEDS_NONE
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.kind.name,
            "reasons": list(self.reasons),
            "hosted": list(self.hosted),
            "missing_replay_pointer": list(self.missing_replay_pointer),
            "not_started": list(self.not_started),
            "outbox_backlog": self.outbox_backlog,
            "blocked_events": self.blocked_events,
            "needs": self.needs,
            "message": self.message,
        }


def load_image(meta: LocalMeta, raftlog: RaftLogStore | None = None) -> LocalImage:
    """Read localmeta (verify every record, decode descriptors) and which raft groups have
    persisted state. Never writes."""
    try:
        meta.verify()
        identity = meta.identity()
        raw_regions = meta.regions()
        regions: dict[int, RegionDescriptor] = {}
        for rid, raw in raw_regions.items():
            try:
                desc = decode(raw)
            except DecodeError as exc:
                raise CorruptMetadataError(
                    f"meta_regions[{rid}]: undecodable descriptor: {exc}") from None
            if not isinstance(desc, RegionDescriptor):
                raise CorruptMetadataError(
                    f"meta_regions[{rid}]: holds a {type(desc).__name__}, not a descriptor")
            regions[rid] = desc
        tombs = meta.tombstones()
        return LocalImage(
            identity=identity,
            regions=regions,
            replay=meta.replay_pointers(),
            tombstones=frozenset(tombs),
            tombstone_records={rid: decode_tombstone(rid, raw) for rid, raw in tombs.items()},
            outbox=tuple(meta.outbox()),
            blocked=tuple(meta.blocked()),
            raft_groups=frozenset(raftlog.list_groups()) if raftlog is not None else None,
            data_format=meta.data_format(),
        )
    except CorruptMetadataError as exc:
        return LocalImage(corruption=str(exc))


def derive(image: LocalImage, expected: StoreIdentity | None = None,
           data_format: int | None = None) -> RestartState:
    """The restart state of a store whose localmeta reads as `image` (pure). `data_format`:
    the format this build writes (DATA_FORMAT); a stamped store of another is refused."""
    if image.corruption:
        return RestartState(RestartStateKind.FATAL, ("corrupt_metadata",), needs=NEEDS_REBUILD,
                            message=f"localmeta is corrupt: {image.corruption}")
    ident = image.identity
    if expected is not None and ident is not None and ident != expected:
        return RestartState(
            RestartStateKind.FATAL, ("identity_mismatch",), needs=NEEDS_NONE,
            message=(f"data directory belongs to store {ident.store_id} of cluster "
                     f"{ident.cluster_id:#x}, not store {expected.store_id} of cluster "
                     f"{expected.cluster_id:#x}"))
    found = image.data_format or LEGACY_DATA_FORMAT
    if data_format is not None and ident is not None and found != data_format:
        return RestartState(
            RestartStateKind.FATAL, ("data_format_mismatch",), needs=NEEDS_NONE,
            message=(f"data directory holds values in data format {found}"
                     f"{' (values without a modification index header)' if found == 1 else ''}"
                     f"; this build reads data format {data_format} and has no migration: "
                     f"run the build that wrote it"))
    for rid, desc in image.regions.items():
        if desc.region_id != rid:
            return RestartState(
                RestartStateKind.FATAL, ("inconsistent_metadata",), needs=NEEDS_REBUILD,
                message=f"meta_regions[{rid}] holds the descriptor of region {desc.region_id}")
    if image.regions and ident is None:
        return RestartState(
            RestartStateKind.FATAL, ("inconsistent_metadata",), needs=NEEDS_REBUILD,
            message="localmeta lists hosted regions but no store identity was ever stamped")
    reasons: list[str] = []
    hosted: list[int] = []
    missing: list[int] = []
    not_started: list[int] = []
    store_id = expected.store_id if expected is not None else (ident.store_id if ident else 0)
    for rid in sorted(image.regions):
        desc = image.regions[rid]
        me = desc.peer_on(store_id) if store_id else None
        if rid in image.tombstones and blocks(
                image.tombstone_records.get(rid) or decode_tombstone(rid, None),
                me.peer_id if me else 0, None):
            not_started.append(rid)
            reasons.append(f"region {rid} is both hosted and tombstoned (tombstone wins)")
            continue
        if store_id and me is None:
            not_started.append(rid)
            reasons.append(f"region {rid} names no peer on store {store_id}")
            continue
        ptr = image.replay.get(rid)
        if ptr is None:
            missing.append(rid)
            not_started.append(rid)
            continue
        if (ptr.applied_index > 0 and image.raft_groups is not None
                and rid not in image.raft_groups):
            missing.append(rid)
            not_started.append(rid)
            reasons.append(f"region {rid} applied {ptr.applied_index} but its raft log is gone")
            continue
        hosted.append(rid)
    if missing:
        reasons.insert(0, "missing replay pointer for region(s) "
                       + ", ".join(str(r) for r in missing))
    if image.outbox:
        reasons.append(f"publish outbox backlog of {len(image.outbox)} event(s)")
    if image.blocked:
        reasons.append(f"{len(image.blocked)} blocked event(s)")
    degraded = bool(reasons)
    if missing:
        needs = NEEDS_REBUILD
    elif image.regions or image.outbox or image.blocked:
        needs = NEEDS_CATCH_UP
    else:
        needs = NEEDS_NONE
    kind = RestartStateKind.DEGRADED if degraded else RestartStateKind.READY
    message = "; ".join(reasons) if reasons else (
        f"{len(hosted)} region(s) to rehost" if hosted else "fresh store")
    return RestartState(kind, tuple(reasons), tuple(hosted), tuple(missing), tuple(not_started),
                        len(image.outbox), len(image.blocked), needs, message)
