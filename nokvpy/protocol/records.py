"""Shared records of cluster truth: tokens, epochs, region descriptors and rooted events.

Owns: the immutable value types that metaroot, coordinators, stores and clients exchange.
Never holds behaviour beyond small, pure helpers; never imports an encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import total_ordering

from nokvpy.protocol.base import wire_type
from nokvpy.protocol.enums import (
    AdmissionClass,
    AdmissionReason,
    AllocatorKind,
    CatchUpAction,
    CatchUpState,
    DegradedMode,
    EventKind,
    Freshness,
    RegionState,
    ServingClass,
    SyncHealth,
)


@wire_type(50)
@total_ordering
@dataclass(slots=True, frozen=True)
class RootToken:
    """Position of a rooted event: `index` is dense (1, 2, 3 ...), `term` the raft term that
    committed it. Tokens compare by index only."""

    term: int = 0
    index: int = 0

    def __lt__(self, other: RootToken) -> bool:
        return self.index < other.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RootToken) and self.index == other.index

    def __hash__(self) -> int:
        return hash(self.index)

    def __str__(self) -> str:
        return f"{self.term}/{self.index}"


ZERO_TOKEN = RootToken(0, 0)


@wire_type(51)
@total_ordering
@dataclass(slots=True, frozen=True)
class RegionEpoch:
    """`version` grows on every range change (split, merge); `conf_ver` on every peer change."""

    version: int = 1
    conf_ver: int = 1

    def __lt__(self, other: RegionEpoch) -> bool:
        return (self.version, self.conf_ver) < (other.version, other.conf_ver)

    def is_stale_against(self, current: RegionEpoch) -> bool:
        return self.version < current.version or self.conf_ver < current.conf_ver

    def __str__(self) -> str:
        return f"v{self.version}/c{self.conf_ver}"


@wire_type(52)
@dataclass(slots=True, frozen=True)
class PeerMeta:
    """One replica of a region: its store, its raft peer id, and whether it is a learner."""

    store_id: int
    peer_id: int
    learner: bool = False


@wire_type(53)
@dataclass(slots=True, frozen=True)
class RegionDescriptor:
    """A region: key range [start_key, end_key) (empty end = +infinity), epoch and peers.

    `revision` is the descriptor revision: the root index of the event that published this
    descriptor (0 for a descriptor not yet rooted).
    """

    region_id: int
    start_key: bytes = b""
    end_key: bytes = b""
    epoch: RegionEpoch = field(default_factory=RegionEpoch)
    peers: tuple[PeerMeta, ...] = ()
    state: RegionState = RegionState.RUNNING
    revision: int = 0

    def contains(self, key: bytes) -> bool:
        return self.start_key <= key and (not self.end_key or key < self.end_key)

    def peer_on(self, store_id: int) -> PeerMeta | None:
        for p in self.peers:
            if p.store_id == store_id:
                return p
        return None

    def voters(self) -> tuple[PeerMeta, ...]:
        return tuple(p for p in self.peers if not p.learner)

    def same_truth(self, other: RegionDescriptor) -> bool:
        """Equal except for the revision stamp."""
        return replace(self, revision=0) == replace(other, revision=0)

    def with_revision(self, revision: int) -> RegionDescriptor:
        return replace(self, revision=revision)


# ---- rooted event payloads -------------------------------------------------------------


@wire_type(60)
@dataclass(slots=True, frozen=True)
class StoreMembership:
    """Payload of STORE_JOINED (the coordinator publishes it on a join) and STORE_RETIRED."""

    store_id: int
    address: str = ""


@wire_type(61)
@dataclass(slots=True, frozen=True)
class AllocatorFence:
    """Payload of ID_/TSO_ALLOCATOR_FENCED (on a coordinator's FenceAllocatorRequest): metaroot
    raised that allocator's fence, the bound of what may be handed out, to `minimum`."""

    kind: AllocatorKind
    minimum: int


@wire_type(62)
@dataclass(slots=True, frozen=True)
class RegionUpsert:
    """Payload of REGION_BOOTSTRAP (sent by the coordinator) and REGION_DESCRIPTOR_PUBLISHED."""

    descriptor: RegionDescriptor


@wire_type(63)
@dataclass(slots=True, frozen=True)
class RegionRemoval:
    """Payload of REGION_TOMBSTONED, published by the coordinator on a store's RemoveRegion;
    `base` is the descriptor it removes (None: whatever is current)."""

    region_id: int
    base: RegionDescriptor | None = None


@wire_type(64)
@dataclass(slots=True, frozen=True)
class RangeSplit:
    """Payload of the split events (stores publish them): `base_parent` becomes `left` (same id)
    and `right`, a new region from `split_key` on."""

    parent_region_id: int
    split_key: bytes
    left: RegionDescriptor
    right: RegionDescriptor
    base_parent: RegionDescriptor


@wire_type(65)
@dataclass(slots=True, frozen=True)
class RangeMerge:
    """Payload of the merge events (stores publish them): adjacent `base_left` and `base_right`
    become `merged`, which keeps the target's region id."""

    left_region_id: int
    right_region_id: int
    merged: RegionDescriptor
    base_left: RegionDescriptor
    base_right: RegionDescriptor


@wire_type(66)
@dataclass(slots=True, frozen=True)
class PeerChange:
    """Payload of the peer addition / removal events (stores publish them): adding or removing
    peer `peer_id` on store `store_id` turns `base` into `target`."""

    region_id: int
    store_id: int
    peer_id: int
    target: RegionDescriptor
    base: RegionDescriptor


@wire_type(67)
@dataclass(slots=True, frozen=True)
class RecoveryRecord:
    """Append-only evidence of a compensation or reconciliation (DESIGN 7)."""

    transition_id: str
    action: str  # "compensated" | "compensation_failed" | "reconciled_forward" | ...
    failure_evidence: str
    undone: str = ""
    remained: str = ""
    observed_root_index: int = 0
    observed_epoch: RegionEpoch | None = None


@wire_type(70)
@dataclass(slots=True, frozen=True)
class RootEvent:
    """One typed, globally ordered mutation of cluster truth.

    `payload` is one of the payload records above or a grant record of
    `nokvpy.protocol.grants`; which one is fixed by `kind`. `request_id` makes an append
    idempotent: an identical event with the same request id is answered with its first token.
    """

    kind: EventKind
    payload: object
    request_id: str = ""


@wire_type(71)
@dataclass(slots=True, frozen=True)
class CommittedEvent:
    """A rooted event and the token it committed at: metaroot's log and its watch deltas."""

    token: RootToken
    event: RootEvent


# ---- witnesses --------------------------------------------------------------------------


@wire_type(75)
@dataclass(slots=True, frozen=True)
class RouteWitness:
    """How fresh a route answer is, and why (DESIGN 4.4)."""

    served_root_token: RootToken
    current_root_token: RootToken
    root_lag: int
    served_freshness: Freshness
    served_by_leader: bool
    catch_up_state: CatchUpState
    degraded_mode: DegradedMode
    serving_class: ServingClass
    sync_health: SyncHealth
    descriptor_revision: int = 0
    coordinator_id: int = 0
    # STRONG answers: the answering coordinator's region_lookup grant, signed by metaroot
    # (nokvpy.protocol.grants.GrantEvidence; clients check it with nokvpy.grantsig.verify)
    grant_evidence: object = None


@wire_type(76)
@dataclass(slots=True, frozen=True)
class CatchUpStep:
    """What one input (delta, keepalive, checkpoint) did to a coordinator's root view."""

    root_token_before: RootToken
    root_token_after: RootToken
    catch_up_state: CatchUpState
    catch_up_action: CatchUpAction


@wire_type(77)
@dataclass(slots=True, frozen=True)
class Admission:
    """The admission decision of one request (DESIGN 5)."""

    cls: AdmissionClass
    reason: AdmissionReason
    detail: str = ""
    leader_peer_id: int = 0
    leader_store_id: int = 0
    current_epoch: RegionEpoch | None = None
    descriptor: RegionDescriptor | None = None

    @property
    def accepted(self) -> bool:
        return self.reason == AdmissionReason.ACCEPTED
