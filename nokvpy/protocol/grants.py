"""Wire records of authority grants, append fences, transitions and the rooted checkpoint.

Owns: the value types of DESIGN section 6 (grants, retirements, inheritances, grant commands
and their results), the fences an append carries (DESIGN 4.6, 6), the pending-transition and
transition-listing records (DESIGN 4.6), the assessment record, and `RootCheckpoint`: every
field needed to rebuild `metaroot.state.RootState` exactly (DESIGN 4.2). Tags 80-99.
Never holds behaviour beyond small pure helpers; never imports an encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from nokvpy.protocol.base import wire_type
from nokvpy.protocol.enums import (
    AssessmentDecision,
    Duty,
    EventKind,
    RetryClass,
    TransitionKind,
    TransitionPhase,
)
from nokvpy.protocol.records import RecoveryRecord, RegionDescriptor, RootToken

# ---- enums --------------------------------------------------------------------------------


class RetirementMode(IntEnum):
    SEALED_EXACT = 1  # graceful: bounds are the exact usages the holder reported
    EXPIRED_BOUND = 2  # expiry: bounds are the full grant bounds (the holder may have used all)


class GrantCommandKind(IntEnum):
    ISSUE = 1  # campaign or renew
    SEAL = 2  # graceful shutdown
    RETIRE_EXPIRED = 3
    INHERIT = 4


class GrantStatus(IntEnum):
    GRANTED = 1  # ISSUE succeeded (new grant or renewal)
    HELD = 2  # another holder's live grant holds a requested duty (primacy)
    RETIRED = 3  # SEAL / RETIRE_EXPIRED / INHERIT succeeded
    REFUSED = 4  # invalid command or a guarantee would be broken (see violation)


class Violation:
    """Which guarantee a refused grant command (or append) would have broken."""

    NONE = ""
    PRIMACY = "primacy"
    INHERITANCE = "inheritance"
    SILENCE = "silence"
    FINALITY = "finality"


# ---- grants ---------------------------------------------------------------------------------


@wire_type(80)
@dataclass(slots=True, frozen=True)
class DutyGrant:
    """One duty and its bound. alloc_id / tso: monotone upper (ids or timestamps up to and
    including `bound`); region_lookup: descriptor revision ceiling. "Covers" = bound >=."""

    duty: Duty
    bound: int


def bounds_map(duties: tuple[DutyGrant, ...]) -> dict[Duty, int]:
    return {d.duty: d.bound for d in duties}


@wire_type(81)
@dataclass(slots=True, frozen=True)
class AuthorityGrant:
    """A rooted grant: `holder` may perform `duties` (within their bounds) until `expires_at_ms`.

    `era` is root-allocated and strictly increasing across holders. `predecessors` are the
    grant ids of the retirements this grant had to cover when it was issued."""

    grant_id: str
    holder: str
    era: int
    issued_at_ms: int
    expires_at_ms: int
    duties: tuple[DutyGrant, ...]
    predecessors: tuple[str, ...] = ()

    def bound_for(self, duty: Duty) -> int | None:
        for d in self.duties:
            if d.duty == duty:
                return d.bound
        return None

    def holds(self, duty: Duty) -> bool:
        return self.bound_for(duty) is not None

    def active_at(self, now_ms: int) -> bool:
        return self.expires_at_ms > now_ms


@wire_type(82)
@dataclass(slots=True, frozen=True)
class GrantRetirement:
    """A retired grant. `bounds` is what a successor must cover; `inherited_by` is the
    successor grant id once inherited ("" = pending audit)."""

    grant_id: str
    holder: str
    era: int
    mode: RetirementMode
    bounds: tuple[DutyGrant, ...]
    retired_at_ms: int
    inherited_by: str = ""

    def bound_for(self, duty: Duty) -> int | None:
        for d in self.bounds:
            if d.duty == duty:
                return d.bound
        return None


@wire_type(83)
@dataclass(slots=True, frozen=True)
class GrantInheritance:
    """Live grant `successor` covered the bounds of retired grant `predecessor`, at `at_ms`."""

    predecessor: str
    successor: str
    at_ms: int


# ---- grant event payloads (EventKind.GRANT_*) -------------------------------------------------


@wire_type(84)
@dataclass(slots=True, frozen=True)
class GrantIssued:
    """GRANT_ISSUED: a new grant, or the renewal of a live grant (same id, holder and era)."""

    grant: AuthorityGrant


@wire_type(85)
@dataclass(slots=True, frozen=True)
class GrantSealed:
    """GRANT_SEALED: graceful retirement (mode SEALED_EXACT)."""

    retirement: GrantRetirement


@wire_type(86)
@dataclass(slots=True, frozen=True)
class GrantRetired:
    """GRANT_RETIRED: retirement on expiry (mode EXPIRED_BOUND)."""

    retirement: GrantRetirement


@wire_type(87)
@dataclass(slots=True, frozen=True)
class GrantInherited:
    """GRANT_INHERITED: metaroot records an inheritance on a coordinator's INHERIT command."""

    inheritance: GrantInheritance


# ---- grant commands -------------------------------------------------------------------------


@wire_type(88)
@dataclass(slots=True, frozen=True)
class GrantCommand:
    """A coordinator's grant command (issue, seal, retire, inherit), sent in a GrantRequest."""

    kind: GrantCommandKind
    holder: str
    grant_id: str = ""
    now_ms: int = 0
    expires_at_ms: int = 0
    duties: tuple[DutyGrant, ...] = ()
    exact_usages: tuple[DutyGrant, ...] = ()
    predecessor_ids: tuple[str, ...] = ()


@wire_type(89)
@dataclass(slots=True, frozen=True)
class GrantCommandResult:
    """Metaroot's answer to a GrantCommand: the status, the grant it concerns, and why."""

    status: GrantStatus
    grant: AuthorityGrant | None = None
    reason: str = ""
    violation: str = Violation.NONE


# ---- append fences --------------------------------------------------------------------------


@wire_type(90)
@dataclass(slots=True, frozen=True)
class AppendFences:
    """Fences checked before (and, when persisted with the event, at) apply.

    `expected_cluster_epoch`: None = unchecked. `duty` + `grant_era`: a duty-gated write; the
    era must be the era of the live grant holding `duty` and above the duty's retired-era
    floor (silence). `now_ms` (extension): when given, that grant must also be unexpired at
    `now_ms`; leave None at apply time unless it was persisted with the event."""

    expected_cluster_epoch: int | None = None
    grant_era: int | None = None
    duty: Duty | None = None
    now_ms: int | None = None


NO_FENCES = AppendFences()


# ---- transitions ----------------------------------------------------------------------------


@wire_type(91)
@dataclass(slots=True, frozen=True)
class StoreRecord:
    """Rooted membership of one store."""

    store_id: int
    address: str = ""
    retired: bool = False
    joined_index: int = 0
    retired_index: int = 0


@wire_type(92)
@dataclass(slots=True, frozen=True)
class PendingTransition:
    """A planned transition not yet terminal: `targets` are installed in the rooted state,
    `bases` are what a cancel restores. `source_token` is the token of the planned event."""

    transition_id: str
    kind: TransitionKind
    planned_kind: EventKind
    region_ids: tuple[int, ...]
    targets: tuple[RegionDescriptor, ...]
    bases: tuple[RegionDescriptor, ...]
    source_token: RootToken


@wire_type(93)
@dataclass(slots=True, frozen=True)
class TransitionEntry:
    """One row of ListTransitions."""

    transition_id: str
    kind: TransitionKind
    phase: TransitionPhase
    region_ids: tuple[int, ...]
    targets: tuple[RegionDescriptor, ...]
    bases: tuple[RegionDescriptor, ...]
    source_token: RootToken


@wire_type(94)
@dataclass(slots=True, frozen=True)
class Assessment:
    """Pure pre-persist assessment of one rooted event (DESIGN 4.6)."""

    transition_id: str
    kind: TransitionKind | None
    phase: TransitionPhase
    decision: AssessmentDecision
    retry_class: RetryClass
    reason: str = ""


# ---- checkpoint -----------------------------------------------------------------------------


@wire_type(95)
@dataclass(slots=True, frozen=True)
class AppliedRequest:
    """Idempotency memory: `request_id` was applied at `token`; `fingerprint` identifies the
    event so a different event reusing the id is refused."""

    request_id: str
    token: RootToken
    fingerprint: str


@wire_type(96)
@dataclass(slots=True, frozen=True)
class EraFloor:
    """Retired-era floor of one duty: eras <= `era` may never write for `duty` again."""

    duty: Duty
    era: int


@wire_type(97)
@dataclass(slots=True, frozen=True)
class RootCheckpoint:
    """The full rooted state at `token` (DESIGN 4.2); rebuilds `RootState` exactly.

    Collections are sorted (stores, descriptors by region id, pending by transition id, grants
    and retirements by grant id, inheritances by predecessor, applied requests by token), so
    two equal states produce equal checkpoints."""

    token: RootToken
    cluster_epoch: int
    membership_epoch: int
    stores: tuple[StoreRecord, ...]
    descriptors: tuple[RegionDescriptor, ...]
    pending: tuple[PendingTransition, ...]
    id_fence: int
    tso_fence: int
    grants: tuple[AuthorityGrant, ...]
    retirements: tuple[GrantRetirement, ...]
    inheritances: tuple[GrantInheritance, ...]
    era_floors: tuple[EraFloor, ...]
    max_era: int
    applied_requests: tuple[AppliedRequest, ...]
    request_window: int
    recovery_records: tuple[RecoveryRecord, ...]


__all__ = [
    "AppendFences",
    "AppliedRequest",
    "Assessment",
    "AuthorityGrant",
    "DutyGrant",
    "EraFloor",
    "GrantCommand",
    "GrantCommandKind",
    "GrantCommandResult",
    "GrantInheritance",
    "GrantInherited",
    "GrantIssued",
    "GrantRetired",
    "GrantRetirement",
    "GrantSealed",
    "GrantStatus",
    "NO_FENCES",
    "PendingTransition",
    "RetirementMode",
    "RootCheckpoint",
    "StoreRecord",
    "TransitionEntry",
    "Violation",
    "bounds_map",
]


@wire_type(98)
@dataclass(slots=True, frozen=True)
class GrantEvidence:
    """A grant as metaroot issued it and metaroot's signature over it (nokvpy.grantsig): a
    coordinator attaches its `region_lookup` evidence to STRONG answers."""

    grant: AuthorityGrant
    signature: bytes
