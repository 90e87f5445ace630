"""Authority grants, coordinator side (DESIGN 6; reference 2.8).

Owns: campaigning for, renewing, inheriting and sealing this coordinator's grants (one grant
per duty: alloc_id, tso, region_lookup), the per-duty serving state (none -> serving ->
draining -> sealed), duty admission with a clock-skew margin, the count of requests in
flight under each grant, and the grant counters shown in diagnostics (era transitions, gate
rejections, prevented primacy / inheritance / silence / finality violations, inheritance).

Primacy is enforced by metaroot: a standby simply finds the duty held (it does not even ask
while its mirror shows another holder's live grant) and takes over once that grant expires.

Time: grants are cross-process, so expiry is wall-clock milliseconds (`time.time()`), used
ONLY here (grant commands and admission). The holder also keeps each grant's expiry on its
own monotonic clock (trio.current_time()): `deadline` = the monotonic time the command that
obtained or renewed it was *sent* + the life metaroot granted, measured from that send (the
wall `now_ms` it carried). Admission needs both to be more than the skew margin away, so a
backward step of the wall clock cannot stretch a grant, and a reply that waited (a slow
round trip, a stopped process) has already used up its share of the grant's life. Pacing
uses trio.sleep.
Never: serves a duty without a live, unexpired (beyond the skew margin, on both clocks) grant
of its own whose era is above the duty's retired-era floor; never lowers a bound.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from nokvpy import failpoints
from nokvpy.protocol.enums import Duty, ErrorKind, RetryClass
from nokvpy.protocol.grants import (
    AuthorityGrant,
    DutyGrant,
    GrantCommand,
    GrantCommandKind,
    GrantEvidence,
    GrantStatus,
    Violation,
)
from nokvpy.protocol.metaroot_rpc import GrantRequest
from nokvpy.protocol.records import ZERO_TOKEN, RootToken
from nokvpy.rpc.errors import RemoteError

log = logging.getLogger("nokvpy.coordinator.grants")

NONE, SERVING, DRAINING, SEALED = "none", "serving", "draining", "sealed"
ALL_DUTIES = (Duty.ALLOC_ID, Duty.TSO, Duty.REGION_LOOKUP)
DEFAULT_WINDOWS = {Duty.ALLOC_ID: 10_000, Duty.TSO: 10_000}
MAX_CLOCK_SKEW_MS = 500


def wall_ms() -> int:
    return int(time.time() * 1000)


class GateRejected(Exception):
    """Duty admission refused: `reason` is stable, `violation` the guarantee it protects."""

    def __init__(self, duty: Duty, reason: str, message: str, violation: str,
                 holder: str = "") -> None:
        super().__init__(message)
        self.duty, self.reason, self.violation, self.holder = duty, reason, violation, holder

    def remote(self) -> RemoteError:
        return RemoteError(ErrorKind.NOT_LEADER, self.reason, str(self),
                           {"duty": str(self.duty), "holder": self.holder,
                            "violation": self.violation,
                            "retry_class": RetryClass.RETRY.name})


@dataclass
class DutyState:
    duty: Duty
    grant: AuthorityGrant | None = None  # own grant, as metaroot last answered
    serving: str = NONE
    in_flight: int = 0
    # how the current era was obtained: issued fresh by this process (its allocator window
    # starts exactly after the fence that preceded it) or taken over in place (renewed).
    acquired_era: int = 0
    acquired_issued: bool = False
    acquired_token: RootToken = ZERO_TOKEN
    # monotonic (trio) time the grant runs out for this holder; None: not measured (a grant
    # installed by hand in a unit test), only the wall clock judges it
    deadline: float | None = None
    signature: bytes = b""  # metaroot's signature over `grant` (GrantReply.signature)
    last_error: str = ""
    last_result: str = ""
    lock: trio.Lock = field(default_factory=trio.Lock)
    idle: trio.Event = field(default_factory=trio.Event)


class GrantLoop:
    def __init__(self, meta: Any, sub: Any, holder: str, ttl: float,
                 duties: tuple[Duty, ...] = ALL_DUTIES,
                 windows: dict[Duty, int] | None = None,
                 usage_of=None, rng: random.Random | None = None,
                 clock=wall_ms, monotonic: bool = True) -> None:
        self.meta = meta
        self.sub = sub
        self.holder = holder
        self.ttl_ms = max(100, int(ttl * 1000))
        self.renew_before_ms = self.ttl_ms // 3
        self.skew_ms = min(MAX_CLOCK_SKEW_MS, self.renew_before_ms // 2)
        self.duties = tuple(duties)
        self.windows = dict(DEFAULT_WINDOWS, **(windows or {}))
        self.states = {d: DutyState(d) for d in self.duties}
        self.usage_of = usage_of or (lambda duty, grant: None)
        self.clock = clock
        self.monotonic = monotonic  # False: the wall clock alone (NOKV_UNSAFE_HOLDER_PAUSE)
        self.counters: Counter[str] = Counter()
        self._rng = rng or random.Random()
        self.stopping = False

    # ---- admission ---------------------------------------------------------------------

    def holds(self, duty: Duty) -> bool:
        try:
            self.admit(duty, count=False)
        except GateRejected:
            return False
        return True

    def held_duties(self) -> list[str]:
        return [str(d) for d in self.duties if self.holds(d)]

    def evidence(self, duty: Duty) -> GrantEvidence | None:
        """This holder's grant for `duty` with metaroot's signature (attached to STRONG
        answers), or None without a signed grant."""
        st = self.states.get(duty)
        if st is None or st.grant is None or not st.signature:
            return None
        return GrantEvidence(st.grant, st.signature)

    def standby_for(self, duty: Duty) -> bool:
        """Another coordinator holds `duty` under a grant root lists as active: this one is
        its standby (a healthy state, not a degraded one)."""
        if self.holds(duty):
            return False
        other = self.sub.state.duty_grant(duty)
        return other is not None and other.holder != self.holder and \
            other.active_at(self.clock())

    def standby_duties(self) -> list[str]:
        return [str(d) for d in self.duties if self.standby_for(d)]

    def admit(self, duty: Duty, count: bool = True) -> AuthorityGrant:
        """The own grant that may serve `duty` now, or GateRejected."""
        st = self.states.get(duty)
        try:
            if st is None:
                raise GateRejected(duty, "duty_not_configured",
                                   f"{duty} is not a duty of this coordinator", Violation.PRIMACY)
            if st.serving in (DRAINING, SEALED):
                raise GateRejected(duty, "grant_draining", f"{duty} grant is {st.serving}",
                                   Violation.SILENCE)
            g = st.grant
            other = self.sub.state.duty_grant(duty)
            if g is None:
                holder = other.holder if other is not None else ""
                raise GateRejected(duty, "grant_not_held",
                                   f"{self.holder} does not hold {duty}"
                                   + (f" (held by {holder})" if holder else ""),
                                   Violation.PRIMACY, holder)
            now = self.clock()
            if g.expires_at_ms <= now + self.skew_ms:
                raise GateRejected(duty, "grant_expiring",
                                   f"{duty} grant era {g.era} expires within the clock-skew "
                                   f"margin ({g.expires_at_ms - now} ms left)", Violation.PRIMACY)
            left_ms = self._monotonic_left_ms(st)
            if left_ms is not None and left_ms <= self.skew_ms:
                raise GateRejected(duty, "grant_expiring",
                                   f"{duty} grant era {g.era} expires within the clock-skew "
                                   f"margin on the monotonic clock ({left_ms} ms left)",
                                   Violation.PRIMACY)
            floor = self.sub.state.era_floor(duty)
            if g.era <= floor:
                raise GateRejected(duty, "grant_era_retired",
                                   f"{duty} era {g.era} <= retired floor {floor}",
                                   Violation.SILENCE)
            if other is not None and other.era > g.era:
                raise GateRejected(duty, "grant_superseded",
                                   f"{duty} is held by {other.holder} at era {other.era}",
                                   Violation.SILENCE, other.holder)
            return g
        except GateRejected as exc:
            if count:
                self.counters["gate_rejections"] += 1
                self.counters[f"gate_rejections.{exc.reason}"] += 1
                self.counters[f"violations.{exc.violation}"] += 1
            raise

    @staticmethod
    def _monotonic_left_ms(st: DutyState) -> int | None:
        if st.deadline is None:
            return None
        return int((st.deadline - trio.current_time()) * 1000)

    def _expired(self, st: DutyState, now_ms: int) -> bool:
        g = st.grant
        if g is None:
            return True
        left = self._monotonic_left_ms(st)
        return g.expires_at_ms <= now_ms or (left is not None and left <= 0)

    @asynccontextmanager
    async def serving(self, duty: Duty):
        """Admit one duty request and count it in flight until it finishes."""
        g = self.admit(duty)
        st = self.states[duty]
        st.in_flight += 1
        try:
            yield g
        finally:
            st.in_flight -= 1
            if st.in_flight == 0:
                st.idle.set()
                st.idle = trio.Event()

    # ---- the loop ----------------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = 0.2
        # checked 4x per renew window, so a renewal starts well before the skew margin
        interval = max(0.02, self.renew_before_ms / 4000)
        while not self.stopping:
            failed = False
            for duty in self.duties:
                if self.stopping or self.states[duty].serving in (DRAINING, SEALED):
                    continue
                try:
                    await self.ensure(duty)
                except trio.Cancelled:
                    raise
                except Exception as exc:  # noqa: BLE001 - retried with backoff
                    failed = True
                    self.states[duty].last_error = f"{type(exc).__name__}: {exc}"[:300]
                    self.counters["command_errors"] += 1
            if failed:
                await trio.sleep(backoff * (0.8 + 0.4 * self._rng.random()))
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.2
                await trio.sleep(interval * (0.8 + 0.4 * self._rng.random()))

    async def ensure(self, duty: Duty) -> None:
        """Campaign, renew or inherit for `duty` as needed."""
        st = self.states[duty]
        async with st.lock:
            now = self.clock()
            g = st.grant
            if g is not None and self._expired(st, now):
                self._lose(st, "expired")
                g = None
            if g is not None:
                if g.expires_at_ms - now > self.renew_before_ms:
                    if self._pending_predecessors(g):
                        await self._inherit(st, g)
                    return
                bound = g.bound_for(duty) or 0
                if duty == Duty.REGION_LOOKUP:  # the ceiling follows the served revisions
                    bound = max(bound, self.sub.state.max_descriptor_revision())
                await self._issue(st, g.grant_id, bound, renew=True)
                return
            other = self.sub.state.duty_grant(duty)
            if other is not None and other.holder != self.holder and other.active_at(now):
                st.last_result = f"standby: held by {other.holder} era {other.era}"
                return
            await self._issue(st, "", self._campaign_bound(duty), renew=False)

    def _campaign_bound(self, duty: Duty) -> int:
        """Cover every predecessor (un-inherited retirements, an expired holder) and the
        rooted fence; allocators get a fresh window on top."""
        state = self.sub.state
        base = 0
        if duty == Duty.ALLOC_ID:
            base = state.id_fence
        elif duty == Duty.TSO:
            base = state.tso_fence
        else:
            base = state.max_descriptor_revision()
        for rid in state.uninherited:
            b = state.retirements[rid].bound_for(duty)
            if b is not None:
                base = max(base, b)
        other = state.duty_grant(duty)
        if other is not None:
            base = max(base, other.bound_for(duty) or 0)
        return base + self.windows.get(duty, 0)

    async def _issue(self, st: DutyState, grant_id: str, bound: int, renew: bool,
                     expires_at_ms: int | None = None) -> AuthorityGrant | None:
        duty = st.duty
        now = self.clock()
        sent = trio.current_time()  # the grant's life is counted from here, not the reply
        expires = expires_at_ms or now + self.ttl_ms
        cmd = GrantCommand(GrantCommandKind.ISSUE, self.holder, grant_id, now, expires,
                           (DutyGrant(duty, bound),))
        await failpoints.acheck("coordinator.before_grant_issue")
        reply = await self.meta.call(GrantRequest(cmd), timeout=5.0, leader=True)
        result = reply.result
        st.last_result = f"{result.status.name}: {result.reason}"[:200]
        self.counters[f"commands.issue.{result.status.name.lower()}"] += 1
        if result.status != GrantStatus.GRANTED or result.grant is None:
            if result.violation:
                self.counters[f"violations.{result.violation}"] += 1
            if st.grant is not None and (result.status == GrantStatus.HELD
                                         or self._expired(st, self.clock())):
                self._lose(st, f"refused: {result.reason}")
            st.last_error = result.reason
            return None
        g = result.grant
        if g.holder != self.holder:  # cannot happen: metaroot answers for this holder
            st.last_error = f"granted to {g.holder}"
            return None
        if st.grant is None or st.grant.era != g.era:
            self.counters["era_transitions"] += 1
            st.acquired_era = g.era
            st.acquired_issued = result.reason == "issued" and not renew
            st.acquired_token = reply.token
            log.info("%s holds %s at era %d (%s) until %d", self.holder, duty, g.era,
                     result.reason, g.expires_at_ms)
        st.grant = g
        st.signature = bytes(getattr(reply, "signature", b"") or b"")
        # root stamps the grant with its own clock (keeping the lifetime asked for): the
        # lifetime counted here from the send is never more than what was asked
        life_ms = min(g.expires_at_ms - now, expires - now)
        st.deadline = sent + life_ms / 1000 if self.monotonic else None
        st.serving = SERVING
        st.last_error = ""
        if g.predecessors:
            await self.sub.wait_served(reply.token.index, 2.0)
        if self._pending_predecessors(g):
            await self._inherit(st, g)
        return g

    def _pending_predecessors(self, g: AuthorityGrant) -> list[str]:
        state = self.sub.state
        return [p for p in g.predecessors
                if (r := state.retirements.get(p)) is not None and not r.inherited_by]

    async def _inherit(self, st: DutyState, g: AuthorityGrant) -> None:
        preds = tuple(self._pending_predecessors(g))
        cmd = GrantCommand(GrantCommandKind.INHERIT, self.holder, g.grant_id, self.clock(),
                           predecessor_ids=preds)
        reply = await self.meta.call(GrantRequest(cmd), timeout=5.0, leader=True)
        result = reply.result
        if result.status == GrantStatus.RETIRED:
            self.counters["inheritance.submitted" if result.reason == "inherited"
                          else "inheritance.skipped"] += 1
            await self.sub.wait_served(reply.token.index, 2.0)
        else:
            self.counters[f"violations.{result.violation or 'none'}"] += 1
            st.last_error = f"inherit: {result.reason}"[:200]

    def _lose(self, st: DutyState, why: str) -> None:
        if st.grant is not None:
            log.info("%s lost %s era %d: %s", self.holder, st.duty, st.grant.era, why)
            self.counters["grants_lost"] += 1
        st.grant = None
        st.deadline = None
        if st.serving == SERVING:
            st.serving = NONE

    async def raise_bound(self, duty: Duty, bound: int) -> AuthorityGrant:
        """Raise the own grant's bound for `duty` in place (same era); the new upper also
        fences the allocator in metaroot. Raises GateRejected when the grant is gone."""
        st = self.states[duty]
        async with st.lock:
            g = st.grant
            if g is None or st.serving != SERVING:
                raise GateRejected(duty, "grant_not_held", f"{duty} grant lost",
                                   Violation.PRIMACY)
            if (g.bound_for(duty) or 0) >= bound:
                return g
            new = await self._issue(st, g.grant_id, bound, renew=True,
                                    expires_at_ms=max(g.expires_at_ms, self.clock() + 1))
            if new is None or new.era != g.era:
                raise GateRejected(duty, "grant_not_held",
                                   f"{duty} bound raise refused: {st.last_error}",
                                   Violation.PRIMACY)
            self.counters[f"bound_raises.{duty}"] += 1
            return new

    # ---- shutdown ----------------------------------------------------------------------

    async def seal_all(self, timeout: float = 5.0) -> dict[str, str]:
        """Drain (refuse new duty requests, wait for in-flight ones) then SEAL every held
        grant with its exact usage. Returns duty -> outcome."""
        self.stopping = True
        out: dict[str, str] = {}
        with trio.move_on_after(timeout / 2):
            for st in self.states.values():
                if st.grant is not None:
                    st.serving = DRAINING
            for st in self.states.values():
                while st.in_flight > 0:
                    await st.idle.wait()
        for st in self.states.values():
            g = st.grant
            if g is None:
                out[str(st.duty)] = "not_held"
                continue
            async with st.lock:
                usage = self.usage_of(st.duty, g)
                bound = g.bound_for(st.duty) or 0
                usages = ()
                if usage is not None:
                    usages = (DutyGrant(st.duty, max(0, min(bound, usage))),)
                cmd = GrantCommand(GrantCommandKind.SEAL, self.holder, g.grant_id, self.clock(),
                                   exact_usages=usages)
                try:
                    with trio.fail_after(max(0.5, timeout / 2)):
                        reply = await self.meta.call(GrantRequest(cmd), timeout=timeout / 2,
                                                     leader=True)
                except Exception as exc:  # noqa: BLE001 - reported; the grant will expire
                    out[str(st.duty)] = f"seal_failed: {type(exc).__name__}"
                    st.serving = SERVING
                    continue
                if reply.result.status == GrantStatus.RETIRED:
                    st.serving = SEALED
                    st.grant = None
                    st.deadline = None
                    self.counters["grants_sealed"] += 1
                    out[str(st.duty)] = f"sealed era {g.era} usage {usages[0].bound if usages else bound}"
                else:
                    st.serving = SERVING
                    out[str(st.duty)] = f"seal_refused: {reply.result.reason}"
        return out

    # ---- diagnostics -------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        now = self.clock()
        duties: dict[str, Any] = {}
        for d, st in self.states.items():
            rooted = self.sub.state.duty_grant(d)
            g = st.grant or rooted
            duties[str(d)] = {
                "holder": g.holder if g is not None else "",
                "held_by_self": st.grant is not None,
                "usable_by_self": self.holds(d),
                "era": g.era if g is not None else 0,
                "grant_id": g.grant_id if g is not None else "",
                "bound": (g.bound_for(d) or 0) if g is not None else 0,
                "expires_in_ms": (g.expires_at_ms - now) if g is not None else 0,
                "monotonic_left_ms": (self._monotonic_left_ms(st) or 0)
                if st.grant is not None else 0,
                "serving_state": st.serving,
                "in_flight": st.in_flight,
                "era_floor": self.sub.state.era_floor(d),
                "last_result": st.last_result,
                "last_error": st.last_error,
            }
        return {
            "holder_id": self.holder,
            "ttl_ms": self.ttl_ms,
            "renew_before_ms": self.renew_before_ms,
            "clock_skew_ms": self.skew_ms,
            "duties": duties,
        }
