"""Requests and replies of the coordinator service (DESIGN 4.3-4.6, 6, 7). Tags 300-399.

Route-read refusals travel as remote errors of kind `rejected` with a stable reason (for
example `root_lag_exceeded`) and `details["witness"]` holding the RouteWitness, so a refused
caller still learns how far behind the coordinator is.
"""

from __future__ import annotations

from dataclasses import dataclass

from nokvpy.protocol.base import wire_type
from nokvpy.protocol.enums import Freshness, StoreState
from nokvpy.protocol.records import (
    RegionDescriptor,
    RegionEpoch,
    RootEvent,
    RootToken,
    RouteWitness,
)


@wire_type(300)
@dataclass(slots=True, frozen=True)
class GetRegionByKeyRequest:
    """Route read of the region holding `key`: clients ask a coordinator. `freshness` and the
    required token, root lag and descriptor revision bound how stale the answer may be."""

    key: bytes
    freshness: Freshness = Freshness.BOUNDED
    required_root_token: RootToken | None = None
    max_root_lag: int | None = None
    required_descriptor_revision: int | None = None


@wire_type(301)
@dataclass(slots=True, frozen=True)
class RouteReply:
    """Answer to GetRegionByKeyRequest: the region (None: no region holds the key), its witness,
    the leader store if known (0: unknown) and the addresses of the region's stores."""

    descriptor: RegionDescriptor | None
    witness: RouteWitness
    leader_store_id: int = 0
    store_addrs: dict[int, str] | None = None  # addresses of the descriptor's stores


@wire_type(302)
@dataclass(slots=True, frozen=True)
class ScanRegionsRequest:
    """Route read of at most `limit` regions in [start_key, end_key): clients, the CLI."""

    start_key: bytes = b""
    end_key: bytes = b""
    limit: int = 1000
    freshness: Freshness = Freshness.BOUNDED
    required_root_token: RootToken | None = None
    max_root_lag: int | None = None


@wire_type(303)
@dataclass(slots=True, frozen=True)
class ScanRegionsReply:
    """Answer to ScanRegionsRequest: the regions, their witness and the leaders known to it."""

    descriptors: list[RegionDescriptor]
    witness: RouteWitness
    leaders: dict[int, int] | None = None  # region id -> leader store id


@wire_type(304)
@dataclass(slots=True, frozen=True)
class PublishRootEventRequest:
    """A store publishes a topology event (planned, terminal, cancel) to root via a coordinator;
    `expected_cluster_epoch` fences a planned publish (None: unchecked)."""

    event: RootEvent
    expected_cluster_epoch: int | None = None


@wire_type(305)
@dataclass(slots=True, frozen=True)
class PublishRootEventReply:
    """Answer to PublishRootEventRequest: the coordinator's assessment and root's token after it."""

    accepted: bool
    assessment: object  # nokvpy.protocol.grants.Assessment-like record
    token: RootToken | None = None


@wire_type(306)
@dataclass(slots=True, frozen=True)
class AssessRootEventRequest:
    """Ask a coordinator how root would take `event`, without publishing it."""

    event: RootEvent


@wire_type(307)
@dataclass(slots=True, frozen=True)
class AssessRootEventReply:
    """Answer to AssessRootEventRequest: the assessment, and store reports at odds with root."""

    assessment: object
    # divergences between store reports and rooted truth on the regions the event touches
    # (plain dicts: kind, store_id, region_id, detail, root_epoch, store_epoch)
    drift: list[object] | None = None


@wire_type(308)
@dataclass(slots=True, frozen=True)
class ListTransitionsRequest:
    """List root's pending transitions (history: also recently finished ones): stores, the CLI."""

    include_history: bool = False


@wire_type(309)
@dataclass(slots=True, frozen=True)
class ListTransitionsReply:
    """Answer to ListTransitionsRequest: TransitionEntry rows as of root token `token`."""

    entries: list[object]
    token: RootToken
    # RecoveryRecords (DESIGN 7) with include_history, oldest first
    recovery_records: list[object] | None = None


@wire_type(310)
@dataclass(slots=True, frozen=True)
class RemoveRegionRequest:
    """A store's tombstone of a region: the coordinator publishes REGION_TOMBSTONED for it,
    fenced by `expected_cluster_epoch` (None: unchecked)."""

    region_id: int
    expected_cluster_epoch: int | None = None


@wire_type(311)
@dataclass(slots=True, frozen=True)
class RemoveRegionReply:
    """Answer to RemoveRegionRequest: whether root applied the tombstone, and the root token."""

    removed: bool
    token: RootToken | None = None


@wire_type(312)
@dataclass(slots=True, frozen=True)
class AllocIdRequest:
    """Allocate `count` consecutive ids from the coordinator holding alloc_id: stores ask for
    the ids of new regions and peers (split, peer addition)."""

    count: int = 1


@wire_type(313)
@dataclass(slots=True, frozen=True)
class AllocIdReply:
    """Answer to AllocIdRequest: ids `first` .. `first + count - 1`, served under the
    coordinator's alloc_id grant of era `era`."""

    first: int
    count: int
    era: int


@wire_type(314)
@dataclass(slots=True, frozen=True)
class TsoRequest:
    """Allocate `count` timestamps from the coordinator holding the tso duty."""

    count: int = 1


@wire_type(315)
@dataclass(slots=True, frozen=True)
class TsoReply:
    """Answer to TsoRequest: timestamps `first` .. `first + count - 1`, under tso grant `era`."""

    first: int
    count: int
    era: int


@wire_type(316)
@dataclass(slots=True, frozen=True)
class StoreJoinRequest:
    """Register a store: a store sends it when it starts, and again when the coordinators no longer
    know it, retrying until one accepts. `store_id` 0 asks the coordinator to allocate one."""

    store_id: int
    address: str


@wire_type(317)
@dataclass(slots=True, frozen=True)
class StoreJoinReply:
    """Answer to StoreJoinRequest: the store's id, the cluster id and the root token of the join
    (a store rejoining at its rooted address gets the coordinator's served token)."""

    store_id: int
    cluster_id: str
    token: RootToken


@wire_type(318)
@dataclass(slots=True, frozen=True)
class RegionHeartbeat:
    """One hosted region as its store reports it in a heartbeat: epoch, role, applied index and
    load; a leader adds its raft configuration and the transition it executes."""

    region_id: int
    epoch: RegionEpoch
    peer_id: int
    is_leader: bool
    leader_peer_id: int
    applied_index: int
    approx_keys: int = 0
    approx_bytes: int = 0
    writes: int = 0  # writes applied since the previous heartbeat
    voters: tuple[int, ...] = ()  # peer ids, as the leader's raft config sees them
    learners: tuple[int, ...] = ()
    pending_transition: str = ""


@wire_type(319)
@dataclass(slots=True, frozen=True)
class StoreHeartbeatRequest:
    """A store's periodic report to the coordinator: its address and hosted regions, its restart
    state, and its publish outbox (entries waiting, entries blocked)."""

    store_id: int
    address: str
    regions: list[RegionHeartbeat]
    restart_state: str = "READY"
    outbox_backlog: int = 0
    blocked_events: int = 0


@wire_type(320)
@dataclass(slots=True, frozen=True)
class SchedulerOperation:
    """A scheduling step for a region leader. `kind`: split | merge | add_peer |
    remove_peer | transfer_leader | compensate | drive_forward."""

    kind: str
    region_id: int
    store_id: int = 0
    peer_id: int = 0
    split_key: bytes = b""
    other_region_id: int = 0
    transition_id: str = ""
    new_region_id: int = 0
    new_peer_ids: tuple[int, ...] = ()
    reason: str = ""  # why the scheduler asks (the failure evidence of compensate / forward)


@wire_type(321)
@dataclass(slots=True, frozen=True)
class StoreHeartbeatReply:
    """The coordinator's answer to a heartbeat: regions to host or drop, operations, addresses."""

    accepted: bool
    should_host: list[RegionDescriptor]
    tombstoned: list[int]
    operations: list[SchedulerOperation]
    store_addrs: dict[int, str]
    token: RootToken
    # region ids whose report was refused: epoch older than the catalog's (stale heartbeat)
    stale_region_ids: tuple[int, ...] = ()
    cluster_epoch: int = 0  # root's cluster epoch as served (the fence for planned publishes)


@wire_type(322)
@dataclass(slots=True, frozen=True)
class StoreInfo:
    """One store as ListStores shows it: address, state, heartbeat age, region and leader counts."""

    store_id: int
    address: str
    state: StoreState
    last_heartbeat_age_ms: int
    region_count: int
    leader_count: int
    restart_state: str = ""


@wire_type(323)
@dataclass(slots=True, frozen=True)
class ListStoresRequest:
    """List the stores a coordinator knows: clients, the CLI, jepsen-lite."""


@wire_type(324)
@dataclass(slots=True, frozen=True)
class ListStoresReply:
    """Answer to ListStoresRequest: one StoreInfo per store, by store id."""

    stores: list[StoreInfo]


@wire_type(325)
@dataclass(slots=True, frozen=True)
class DiagnosticsRequest:
    """Ask a coordinator for its DiagnosticsReply: the CLI, tools, jepsen-lite."""


@wire_type(326)
@dataclass(slots=True, frozen=True)
class DiagnosticsReply:
    """Nested plain data (str keys; ints, strs, lists, dicts) for operators and scripts."""

    body: dict[str, object]


@wire_type(327)
@dataclass(slots=True, frozen=True)
class RegionLeaderHint:
    """A region's leader store (registered for the wire; no service sends it at present)."""

    region_id: int
    leader_store_id: int


@wire_type(328)
@dataclass(slots=True, frozen=True)
class PauseCatchUpRequest:
    """Test and demo control: stop applying root deltas (the coordinator falls behind)."""

    paused: bool


@wire_type(329)
@dataclass(slots=True, frozen=True)
class RetireStoreRequest:
    """Operator (admin role): retire store `store_id`. The first call roots the store's
    drain record (a RecoveryRecord `store_draining`, `coordinator.scheduler.drain_record_id`);
    the scheduler then moves every replica off it and never places one on it; once the
    catalog lists no replica on it and nothing pending names it, STORE_RETIRED is rooted.
    Idempotent: every call answers the progress (docs/operations.md "Retiring a store")."""

    store_id: int


@wire_type(330)
@dataclass(slots=True, frozen=True)
class RetireStoreReply:
    """Progress of a retirement. `state`: "draining" | "retired". `replicas_left`: regions the
    catalog still lists with a replica on the store (`region_ids`, the first 64);
    `pending`: transitions pending in root that name the store; `retired_index`: root index
    of STORE_RETIRED (0 while draining)."""

    store_id: int
    state: str
    replicas_left: int
    region_ids: tuple[int, ...] = ()
    pending: tuple[str, ...] = ()
    retired_index: int = 0
    detail: str = ""
