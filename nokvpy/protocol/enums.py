"""The enums of the control-plane and execution-plane contracts (DESIGN.md sections 4-6).

Owns: every enum value that crosses a process boundary or appears in operator output.
Never changes a value's number once shipped; new values are appended.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class EventKind(IntEnum):
    """Kinds of rooted events (DESIGN 4.1)."""

    STORE_JOINED = 1
    STORE_RETIRED = 2
    ID_ALLOCATOR_FENCED = 3
    TSO_ALLOCATOR_FENCED = 4
    REGION_BOOTSTRAP = 5
    REGION_DESCRIPTOR_PUBLISHED = 6
    REGION_TOMBSTONED = 7
    SPLIT_PLANNED = 8
    SPLIT_COMMITTED = 9
    SPLIT_CANCELLED = 10
    MERGE_PLANNED = 11
    MERGED = 12
    MERGE_CANCELLED = 13
    PEER_ADDITION_PLANNED = 14
    PEER_ADDED = 15
    PEER_ADDITION_CANCELLED = 16
    PEER_REMOVAL_PLANNED = 17
    PEER_REMOVED = 18
    PEER_REMOVAL_CANCELLED = 19
    GRANT_ISSUED = 20
    GRANT_SEALED = 21
    GRANT_RETIRED = 22
    GRANT_INHERITED = 23
    RECOVERY_RECORDED = 24


PLANNED_KINDS = frozenset(
    {EventKind.SPLIT_PLANNED, EventKind.MERGE_PLANNED, EventKind.PEER_ADDITION_PLANNED,
     EventKind.PEER_REMOVAL_PLANNED}
)
TERMINAL_KINDS = frozenset(
    {EventKind.SPLIT_COMMITTED, EventKind.MERGED, EventKind.PEER_ADDED, EventKind.PEER_REMOVED}
)
CANCEL_KINDS = frozenset(
    {EventKind.SPLIT_CANCELLED, EventKind.MERGE_CANCELLED, EventKind.PEER_ADDITION_CANCELLED,
     EventKind.PEER_REMOVAL_CANCELLED}
)


class AllocatorKind(IntEnum):
    ID = 1
    TSO = 2


class Duty(StrEnum):
    ALLOC_ID = "alloc_id"
    TSO = "tso"
    REGION_LOOKUP = "region_lookup"


class StoreState(IntEnum):
    UNKNOWN = 0
    UP = 1
    DOWN = 2
    RETIRED = 3


class RegionState(IntEnum):
    RUNNING = 1
    TOMBSTONE = 2
    MERGING = 3  # store-local only: a merge source frozen by prepare_merge (never rooted)


class Freshness(IntEnum):
    STRONG = 1
    BOUNDED = 2
    BEST_EFFORT = 3


class CatchUpState(IntEnum):
    FRESH = 1
    LAGGING = 2
    BOOTSTRAP_REQUIRED = 3
    RECOVERING = 4
    UNAVAILABLE = 5


class CatchUpAction(IntEnum):
    NONE = 0  # nothing to do (idle keepalive at the same token)
    ADVANCE = 1
    RELOAD = 2
    BOOTSTRAP = 3
    REJECT = 4


class DegradedMode(IntEnum):
    HEALTHY = 1
    ROOT_LAGGING = 2
    ROOT_UNAVAILABLE = 3
    COORDINATOR_DEGRADED = 4
    VIEW_ONLY = 5


class ServingClass(IntEnum):
    AUTHORITATIVE = 1
    BOUNDED_STALE = 2
    DEGRADED = 3


class SyncHealth(IntEnum):
    HEALTHY = 1
    LAGGING = 2
    BOOTSTRAP_REQUIRED = 3
    ROOT_UNAVAILABLE = 4


class TransitionKind(IntEnum):
    PEER_ADDITION = 1
    PEER_REMOVAL = 2
    SPLIT = 3
    MERGE = 4
    TOMBSTONE = 5


class TransitionPhase(IntEnum):
    """Coordinator-side phase of a transition (DESIGN 4.6)."""

    PLANNED = 1
    ADMITTED = 2
    COMPLETED = 3
    CANCELLED = 4
    CONFLICTED = 5
    SUPERSEDED = 6
    ABORTED = 7


class AssessmentDecision(IntEnum):
    APPLY = 1
    SKIP = 2  # already reflected in root: accept without a second write
    REJECT = 3


class RetryClass(IntEnum):
    """What a caller should do with a refused request."""

    NONE = 0  # success, nothing to retry
    RETRY = 1  # transient: retry with backoff
    REFRESH = 2  # refresh route / epoch / token, then retry
    CONFLICT = 3  # another transition owns the target: retry after it finishes
    PERMANENT = 4  # never retry


class AdmissionClass(IntEnum):
    READ = 1
    WRITE = 2
    TOPOLOGY = 3


class AdmissionReason(IntEnum):
    ACCEPTED = 0
    INVALID = 1
    STORE_NOT_MATCH = 2
    NOT_HOSTED = 3
    EPOCH_MISMATCH = 4
    KEY_NOT_IN_REGION = 5
    NOT_LEADER = 6
    CANCELED = 7
    TIMED_OUT = 8
    QUEUE_SATURATED = 9
    SCHEDULER_DEGRADED = 10
    STALE = 11


class ExecutionOutcome(IntEnum):
    """Forward-only outcome of one execution target (DESIGN 5)."""

    REJECTED = 1
    QUEUED = 2
    PROPOSED = 3
    COMMITTED = 4
    APPLIED = 5
    FAILED = 6


class TopologyStage(IntEnum):
    """Lifecycle of one topology transition on the executing store (DESIGN 5)."""

    PLANNED = 1
    PLANNED_PUBLISHED = 2
    EXECUTING = 3
    APPLIED = 4
    TERMINAL_PENDING = 5
    TERMINAL_PUBLISHED = 6
    TERMINAL_FAILED = 7
    TERMINAL_BLOCKED = 8
    COMPENSATED = 9
    COMPENSATION_FAILED = 10


class PublishState(IntEnum):
    NOT_REQUIRED = 1
    PENDING = 2
    PUBLISHED = 3
    PUBLISH_FAILED = 4
    BLOCKED = 5


class RestartStateKind(IntEnum):
    READY = 1
    DEGRADED = 2
    FATAL = 3


class ErrorKind(StrEnum):
    """Stable error kinds carried by every remote error (DESIGN 7: machine-actionable)."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    NOT_LEADER = "not_leader"
    STALE_EPOCH = "stale_epoch"
    CONFLICT = "conflict"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    REJECTED = "rejected"  # a contract refused the request (see reason)
    PROTOCOL = "protocol_violation"
    CORRUPTION = "corruption"
    INTERNAL = "internal"
    PERMISSION_DENIED = "permission_denied"  # the caller's role may not call this RPC
