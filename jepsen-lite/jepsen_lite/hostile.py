"""The ``hostile`` nemesis: an attacker on the cluster's network, and the check that it
changed nothing (issue 16, build item 6).

A ``hostile`` window aims at one process (a store, a coordinator or a metaroot peer: the
kind is drawn first, then the process, from the schedule's seed) and makes a seeded mix of
attempts (:func:`plan_attempts`), each of one kind:

* ``garbage``: raw TCP (inside TLS on a TLS cluster) before any handshake: random bytes, a
  frame header declaring a huge length, a truncated frame, valid msgpack of an unknown record
  tag; and after a real ``client`` handshake: a request whose body has an unknown tag (the
  server must answer ``invalid_argument/decode_error`` and count ``bad_requests``) or a frame
  that is not a record at all. The server must close the pre-handshake connections (at once,
  or at its handshake deadline for a truncated frame).
* ``replay``: a full handshake plus one request made with the client credential, recorded
  byte for byte, then sent again on a new connection, all at once (``pipelined``) or record
  by record (``stepwise``). The server's fresh nonce makes the recorded proof wrong: it must
  answer ``bad_hmac`` and never dispatch the request.
* ``role-claim``: the handshake claims ``store`` (and sometimes ``admin``, ``coordinator`` or
  ``metaroot``) proving the client credential; the attacker does not check the server's proof,
  so the claim reaches the server's check, which must refuse it (``bad_hmac``).
* ``privileged``: requests only other roles may send, with the client credential
  (``Identity(cluster_id, "client", n, credential=role_key(secret, "client"))``):
  FailpointSet (``exit`` at a point of the target's kind), FailpointClear, SetFaultRules
  dropping everything; to a store a RaftBatch and an AdminRequest; to a metaroot peer an
  AppendRequest of a RECOVERY_RECORDED event carrying the window's marker, a GrantRequest
  SEAL of the current ``region_lookup`` grant (holder read from a coordinator's Diagnostics,
  which a client may call) and a RaftBatch; to a coordinator PauseCatchUp and RemoveRegion.
  Each must be refused ``permission_denied``.

Every attempt and its answer is a nemesis ``event`` in the history (``window`` = the
window's marker, ``attempt``, ``kind``, ``op``, ``outcome`` = ``refused`` | ``accepted`` |
``no_answer``, ``answer``, and ``counter``: the server counter a refusal increments right
before the server sends it). The window's ``stop`` event carries what an admin connection
observed before the attempts and at the window's end (:func:`observe`): the target's pid,
its active failpoints and fault rules, the coordinator's catch-up pause, root's recovery
records naming a hostile marker (a metaroot snapshot and every coordinator's
ListTransitions), the grants live in root and the SEALED ones, the ``region_lookup`` holder,
and the refusal lines the target logged during the window (nokvpy.rpc's rate-limited
WARNINGs, with their suppressed counts).

:func:`window_effects` turns one window's attempts and observations into effects (each naming
the attempt that asked for it); :func:`check_history` judges every window of a history: an
effect makes the run INVALID (``checks["hostile"]``). The server's counters are not readable
over RPC (``RpcServer.status()`` is in no reply yet), so "the attempt reached the server" is
the typed refusal itself: the server increments ``permission_denied{role=client,rpc=..}``,
``rejected_handshake{reason=..}``, ``protocol_errors{..}`` or ``bad_requests{..}`` right
before it answers or closes, plus the log lines as corroboration.

Never heals anything (there is nothing to heal but the check) and never decides when a window
opens (:mod:`jepsen_lite.nemesis`).

Modules: :mod:`.hostile_plan` (the vocabulary and the seeded plan), :mod:`.hostile_attack`
(the attacker), :mod:`.hostile_check` (observing and judging); this module runs a window
(:func:`open_window`, :func:`close_window`) and re-exports the others' public names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from nokvpy.protocol.admin import FailpointListRequest
from nokvpy.rpc.identity import role_key

from .history import json_safe
from .hostile_attack import (
    CALL_TIMEOUT,
    GARBAGE_WAIT,
    HANDSHAKE_TIMEOUT,
    AttackContext,
    Attacker,
    HandshakeFailed,
)
from .hostile_check import (
    LOG_TAIL_MAX,
    OBSERVE_TIMEOUT,
    check_history,
    count_refusal_lines,
    observe,
    window_effects,
    window_verdict,
)
from .hostile_plan import (
    ATTACKER_NODE_ID,
    CAUSES,
    EXTRA_CLAIMS,
    FAILPOINTS,
    GARBAGE,
    HUGE_LENGTHS,
    KINDS,
    MARKER_PREFIX,
    PREAUTH_GARBAGE,
    PRIVILEGED,
    REPLAYS,
    hostile_params,
    kind_of,
    plan_attempts,
)

READY_TIMEOUT = 15.0


# -- running a window ----------------------------------------------------------------------


@dataclass
class HostileWindow:
    """One window's state, from its opening to its check."""

    target: str | None
    params: dict
    marker: str = ""
    kind: str = ""
    plan: list[dict] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)
    before: dict | None = None
    skipped: str = ""
    log_offset: int | None = None

    def __post_init__(self) -> None:
        self.marker = self.params.get("marker") or f"{MARKER_PREFIX}{self.params.get('seed', 0):08x}"
        self.kind = kind_of(self.target)
        self.plan = plan_attempts(int(self.params.get("seed", 0)), self.kind)


def attack_context(control: Any, window: HostileWindow) -> AttackContext | None:
    """The attacker's knowledge, from a real control (None for a control that has no cluster
    spec, e.g. a fake)."""
    spec = getattr(control, "spec", None)
    if spec is None or window.target is None or not hasattr(control, "rpc"):
        return None
    secret = spec.secret.encode() if spec.secret else b""
    if not secret:
        return None
    same = [control.node_id(n) for n in control.names(window.kind) if n != window.target]
    return AttackContext(spec.cluster_id, role_key(secret, "client"), window.target,
                         control.address(window.target), control.node_id(window.target),
                         window.marker, list(control.coordinator_addrs()), same)


async def _wait_ready(control: Any, target: str, timeout: float) -> bool:
    deadline = trio.current_time() + timeout
    while True:
        if control.alive(target):
            try:
                await control.rpc.call(control.address(target), FailpointListRequest(), 1.0)
                return True
            except Exception:  # noqa: BLE001, S110 - starting
                pass
        if trio.current_time() >= deadline:
            return False
        await trio.sleep(0.2)


async def open_window(control: Any, recorder: Any, window: HostileWindow,
                      clock: Callable[[], float], log: Callable[[str], None] | None = None
                      ) -> dict:
    """Observe, then make every planned attempt (the pre-handshake garbage concurrently, the
    others one after another), recording each as a nemesis ``event`` as it completes."""
    log = log or (lambda msg: None)
    ctx = attack_context(control, window)
    if ctx is None:
        window.skipped = "the control has no authenticated cluster (no spec or secret)"
        return {"skipped": window.skipped, "window": window.marker}
    if not await _wait_ready(control, window.target, READY_TIMEOUT):
        window.skipped = f"{window.target} did not answer within {READY_TIMEOUT:g} s"
        return {"skipped": window.skipped, "window": window.marker}
    cluster = getattr(control, "cluster", None)
    try:
        window.log_offset = cluster.log_path(window.target).stat().st_size
    except (AttributeError, OSError):
        window.log_offset = None
    window.before = await observe(control, window.target)
    attacker = Attacker(ctx, clock)

    async def one(attempt: dict) -> None:
        result = await attacker.run(attempt)
        entry = {"window": window.marker, "at": round(clock(), 3), **{
            k: v for k, v in attempt.items() if k not in ("bytes_seed",)}, **result}
        window.attempts.append(entry)
        recorder.nemesis("event", "hostile", window.target, **json_safe(entry))
        if entry["outcome"] != "refused":
            log(f"hostile {window.target} {entry['attempt']} {entry['kind']} {entry['op']}: "
                f"{entry['outcome']}: {entry['answer']}")

    slow = [a for a in window.plan if a["kind"] == "garbage"]
    rest = [a for a in window.plan if a["kind"] != "garbage"]

    async def in_order() -> None:
        for attempt in rest:
            await one(attempt)

    async with trio.open_nursery() as nursery:
        for attempt in slow:
            nursery.start_soon(one, attempt)
        nursery.start_soon(in_order)
    return {"window": window.marker, "attempts": len(window.attempts),
            "refused": sum(1 for a in window.attempts if a["outcome"] == "refused")}


async def close_window(control: Any, window: HostileWindow, churn_overlap: bool = False
                       ) -> dict:
    """The window's check: observe again and judge (the ``stop`` event's value).
    ``churn_overlap``: a churn window ran meanwhile (its store faults may stop or restart
    a store target: then that is a note, not an effect)."""
    out: dict[str, Any] = {"window": window.marker, "kind": window.kind}
    if window.skipped:
        out["skipped"] = window.skipped
        return out
    if window.before is None and not window.attempts:  # cut short before the attempts
        out["skipped"] = "the run ended before the window's first attempt"
        return out
    after = None
    if window.before is not None:
        after = await observe(control, window.target, log_offset=window.log_offset)
        if churn_overlap:
            after["churn_overlap"] = True
    judged = window_effects(window.attempts, window.before, after, window.target)
    out.update(before=window.before, after=after, attempts=len(window.attempts),
               refused=judged["refused"], effects=judged["effects"],
               unchecked=judged["unchecked"], notes=judged["notes"],
               valid=window_verdict(judged))
    return json_safe(out)


__all__ = [
    "ATTACKER_NODE_ID",
    "CALL_TIMEOUT",
    "CAUSES",
    "EXTRA_CLAIMS",
    "FAILPOINTS",
    "GARBAGE",
    "GARBAGE_WAIT",
    "HANDSHAKE_TIMEOUT",
    "HUGE_LENGTHS",
    "KINDS",
    "LOG_TAIL_MAX",
    "MARKER_PREFIX",
    "OBSERVE_TIMEOUT",
    "PREAUTH_GARBAGE",
    "PRIVILEGED",
    "READY_TIMEOUT",
    "REPLAYS",
    "AttackContext",
    "Attacker",
    "HandshakeFailed",
    "HostileWindow",
    "attack_context",
    "check_history",
    "close_window",
    "count_refusal_lines",
    "hostile_params",
    "json_safe",
    "kind_of",
    "observe",
    "open_window",
    "plan_attempts",
    "window_effects",
    "window_verdict",
]
