"""Rooted state: the pure, deterministic fold of rooted events (DESIGN 4.1, 4.2, 4.6, 6, 7).

Owns: `RootState`, cluster truth at one `RootToken` that folds the next event (`apply`,
`apply_committed`, `apply_all`), its pre-append checks (`validate`, `check_fences`,
`precheck`) and request-id idempotency (`lookup_request`, `fingerprint`). What it holds and
how it is read is `metaroot.facts.RootFacts`; what an event changes is `metaroot.handlers`;
field checks are `metaroot.validate`; the transition situation classifier shared with the
coordinator's assessment is `metaroot.classify`; refusals are `metaroot.errors`; the
persistent maps are `metaroot.persistent`. Every public name of those modules that other code
imports from here is re-exported, so `from metaroot.state import ...` keeps working.
Never: I/O, clocks (time arrives as integer milliseconds inside events and fences), global
random, or half-applied events (a `RootState` is immutable; a rejected event changes nothing).

Cost model: every map is a small persistent structure (`PMap`, `RangeIndex`), so applying one
event copies O(touched entries + a few short spines), never the whole cluster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from metaroot import grants as _grants
from metaroot.classify import (
    TRANSITION_EFFECTS,
    Effect,
    EventClass,
    Situation,
    classify,
    event_class,
)
from metaroot.errors import RootEventRejected, reject
from metaroot.facts import APPLIED_ACTIONS, DEFAULT_REQUEST_WINDOW, FENCE_ACTION, RootFacts
from metaroot.handlers import HANDLERS, UNSAFE_CANCEL_ENV, set_cancel_guard, unsafe_cancel
from metaroot.persistent import PMap, RangeIndex
from metaroot.validate import check_descriptor, check_kind, check_shape
from nokvpy.protocol.enums import Duty, EventKind, RetryClass
from nokvpy.protocol.grants import NO_FENCES, AppendFences, AppliedRequest, Violation
from nokvpy.protocol.records import RootEvent, RootToken
from nokvpy.protocol.transitions import (
    PAYLOAD_TYPES,
    TRANSITION_KINDS,
    shape,
    transition_id,
    transition_kind,
)


def fingerprint(event: RootEvent) -> str:
    """Identity of an event for request-id idempotency (repr of frozen records is stable)."""
    return hashlib.sha256(repr(event).encode()).hexdigest()[:32]


class RootState(RootFacts):
    """Cluster truth at `token` (fields and reads: `RootFacts`). Immutable: `apply` returns a
    new state sharing structure."""

    __slots__ = ()

    # ---- idempotency -----------------------------------------------------------------------

    def lookup_request(self, request_id: str, event: RootEvent) -> RootToken | None:
        """The token an identical event with `request_id` was applied at (None if unknown).

        Raises RootEventRejected("request_id_mismatch") if the id was used by another event."""
        if not request_id:
            return None
        seen = self.requests.get(request_id)
        if seen is None:
            return None
        if seen.fingerprint != fingerprint(event):
            raise reject("request_id_mismatch",
                          f"request {request_id!r} was applied at {seen.token} with another event")
        return seen.token

    # ---- validation and apply --------------------------------------------------------------

    def validate(self, event: RootEvent, fences: AppendFences | None = None) -> None:
        """Pre-append check: raises RootEventRejected if `event` would be refused by `apply`
        at the next token. With `fences`, they are checked too, and an allocator fence event
        of a duty under grant must carry that duty's era (silence); `fences=None` means the
        caller checked them already (`check_fences`)."""
        self._derive(self._next_token(), event, fences or NO_FENCES,
                     require_duty_fence=fences is not None)

    def check_fences(self, fences: AppendFences | None, event: RootEvent | None = None) -> None:
        """Check append fences alone (cluster epoch; era of a duty-gated write), raising
        RootEventRejected. With `event`, also require an era for governed allocator fences."""
        kind = EventKind.RECOVERY_RECORDED
        if event is not None and event.kind in (EventKind.ID_ALLOCATOR_FENCED,
                                                EventKind.TSO_ALLOCATOR_FENCED):
            kind = EventKind(event.kind)
        self._check_fences(kind, fences or NO_FENCES, require_duty=event is not None)

    def precheck(self, event: RootEvent) -> None:
        """State-independent shape check (kind, payload type, fields), raising
        RootEventRejected; cheap enough to run before a raft round."""
        check_shape(event)

    def apply(self, token: RootToken, event: RootEvent,
              fences: AppendFences | None = None) -> RootState:
        """Apply one event at `token` (index must be this state's index + 1).

        Deterministic. An identical re-application of an already applied request id is a
        no-op that only advances the token; invalid events raise RootEventRejected and leave
        nothing applied. `fences` are rechecked only if they were persisted with the event."""
        self._check_token(token)
        return self._derive(token, event, fences or NO_FENCES, require_duty_fence=False)

    def apply_committed(self, token: RootToken, event: RootEvent,
                        fences: AppendFences | None = None,
                        ) -> tuple[RootState, RootEventRejected | None]:
        """Apply a committed log entry: never raises for an invalid event. A rejected entry
        (e.g. two racing proposals, each valid alone) becomes a no-op that advances the token,
        and the rejection is returned so the proposer can be told."""
        self._check_token(token)
        try:
            return self._derive(token, event, fences or NO_FENCES, False), None
        except RootEventRejected as e:
            return self._advance(token, {}), e

    def apply_all(self, committed: Iterable[tuple[RootToken, RootEvent]]) -> RootState:
        state = self
        for token, event in committed:
            state, _ = state.apply_committed(token, event)
        return state

    def _next_token(self) -> RootToken:
        return RootToken(self.token.term, self.token.index + 1)

    def _check_token(self, token: RootToken) -> None:
        if token.index != self.token.index + 1 or token.term < self.token.term:
            raise ValueError(f"token {token} does not follow {self.token}")

    def _advance(self, token: RootToken, changes: dict[str, Any],
                 request: AppliedRequest | None = None) -> RootState:
        changes["token"] = token
        requests, by_index = self.requests, self.request_by_index
        old = token.index - self.request_window
        old_id = by_index.get(old) if old > 0 else None
        if old_id is not None:
            by_index = by_index.delete(old)
            seen = requests.get(old_id)
            if seen is not None and seen.token.index == old:
                requests = requests.delete(old_id)
        if request is not None:
            requests = requests.set(request.request_id, request)
            by_index = by_index.set(token.index, request.request_id)
        if requests is not self.requests:
            changes["requests"], changes["request_by_index"] = requests, by_index
        return self._evolve(changes)

    def _derive(self, token: RootToken, event: RootEvent, fences: AppendFences,
                require_duty_fence: bool) -> RootState:
        kind = check_kind(event)
        request = None
        if event.request_id:
            if self.lookup_request(event.request_id, event) is not None:
                return self._advance(token, {})  # identical re-application: no-op
            request = AppliedRequest(event.request_id, token, fingerprint(event))
        self._check_fences(kind, fences, require_duty_fence)
        changes = HANDLERS[kind](self, token, event)
        return self._advance(token, changes, request)

    def _check_fences(self, kind: EventKind, fences: AppendFences, require_duty: bool) -> None:
        if not isinstance(fences, AppendFences):
            raise reject("invalid_fences", type(fences).__name__)
        if fences.expected_cluster_epoch is not None and \
                fences.expected_cluster_epoch != self.cluster_epoch:
            raise reject("cluster_epoch_mismatch",
                          f"expected {fences.expected_cluster_epoch}, root has "
                          f"{self.cluster_epoch}", RetryClass.REFRESH)
        gated = {EventKind.ID_ALLOCATOR_FENCED: Duty.ALLOC_ID,
                 EventKind.TSO_ALLOCATOR_FENCED: Duty.TSO}.get(kind)
        if require_duty and gated is not None and fences.duty is None and (
                gated in self.duty_grants or self.era_floor(gated) > 0):
            raise reject("grant_era_required", f"{gated} is under grant; fence the write by era",
                          RetryClass.PERMANENT, Violation.SILENCE)
        if fences.duty is None:
            if fences.grant_era is not None:
                raise reject("invalid_fences", "grant_era without duty")
            return
        reason = _grants.fence_violation(self, fences.duty, fences.grant_era, fences.now_ms)
        if reason is not None:
            code, detail, violation = reason
            retry = RetryClass.PERMANENT if violation == Violation.SILENCE else RetryClass.REFRESH
            raise reject(code, detail, retry, violation)


__all__ = [
    "APPLIED_ACTIONS",
    "DEFAULT_REQUEST_WINDOW",
    "FENCE_ACTION",
    "PAYLOAD_TYPES",
    "TRANSITION_EFFECTS",
    "TRANSITION_KINDS",
    "UNSAFE_CANCEL_ENV",
    "Effect",
    "EventClass",
    "PMap",
    "RangeIndex",
    "RootEventRejected",
    "RootFacts",
    "RootState",
    "Situation",
    "check_descriptor",
    "classify",
    "event_class",
    "fingerprint",
    "set_cancel_guard",
    "shape",
    "transition_id",
    "transition_kind",
    "unsafe_cancel",
]
