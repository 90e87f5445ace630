"""The ``hostile`` nemesis's check: what an admin connection observes of a window's target,
and the judgement of every window from its recorded attempts and observations.

Owns: :func:`observe` (the target's pid, failpoints and fault rules, the coordinator's
catch-up pause, root's recovery records naming a hostile marker, the grants live and sealed
in root, the ``region_lookup`` holder, the refusal lines the target logged), the judgement of
one window (:func:`window_effects`, pure: an effect names the attempt that asked for it) and
the run's ``checks["hostile"]`` (:func:`check_history`). Never makes an attempt
(:mod:`.hostile_attack`); see :mod:`.hostile` for the whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import trio

from nokvpy.protocol.admin import FailpointListRequest
from nokvpy.protocol.coordinator_rpc import DiagnosticsRequest, ListTransitionsRequest
from nokvpy.protocol.grants import RetirementMode
from nokvpy.protocol.metaroot_rpc import SnapshotRequest
from nokvpy.wire import GetFaultRules

from .history import is_nemesis
from .hostile_plan import CAUSES, KINDS, MARKER_PREFIX, kind_of

OBSERVE_TIMEOUT = 6.0
LOG_TAIL_MAX = 4 * 1024 * 1024


_REFUSAL = re.compile(r" nokvpy\.rpc (WARNING|INFO) (refused |closing connection from )")
_SUPPRESSED = re.compile(r"\((\d+) similar lines suppressed")


def count_refusal_lines(text: str) -> dict:
    """nokvpy.rpc refusal lines in a log excerpt: ``{"lines": n, "suppressed": m}`` (each
    line may say how many like it were held back by the rate limit since the last one)."""
    lines = suppressed = 0
    for line in text.splitlines():
        if _REFUSAL.search(line):
            lines += 1
            m = _SUPPRESSED.search(line)
            if m:
                suppressed += int(m.group(1))
    return {"lines": lines, "suppressed": suppressed}


def _marked(records: Iterable[Any]) -> list[dict]:
    out = []
    for r in records or ():
        tid = str(getattr(r, "transition_id", ""))
        evidence = str(getattr(r, "failure_evidence", ""))
        if MARKER_PREFIX in tid or MARKER_PREFIX in evidence:
            out.append({"transition_id": tid, "action": str(getattr(r, "action", "")),
                        "failure_evidence": evidence[:200]})
    return out


async def _retry(fn: Callable[[], Any], timeout: float) -> Any:
    """``await fn()`` until it succeeds or ``timeout`` passes (then raise the last error)."""
    deadline = trio.current_time() + timeout
    while True:
        try:
            return await fn()
        except Exception:
            if trio.current_time() >= deadline:
                raise
            await trio.sleep(0.3)


async def observe(control: Any, target: str, *, log_offset: int | None = None,
                  timeout: float = OBSERVE_TIMEOUT) -> dict:
    """What an admin connection sees of the cluster (see the module docstring); a field is
    None when it could not be asked (``errors`` says why)."""
    rpc = control.rpc
    addr = control.address(target)
    obs: dict[str, Any] = {"alive": bool(control.alive(target)), "errors": {}}
    cluster = getattr(control, "cluster", None)
    obs["pid"] = cluster.pid(target) if cluster is not None else None

    async def ask(name: str, fn: Callable[[], Any]) -> Any:
        try:
            return await _retry(fn, timeout)
        except Exception as exc:  # noqa: BLE001 - recorded: the field stays None
            obs["errors"][name] = f"{type(exc).__name__}: {exc}"[:200]
            return None

    reply = await ask("failpoints", lambda: rpc.call(addr, FailpointListRequest(), 2.0))
    obs["failpoints"] = dict(reply.active) if reply is not None else None
    reply = await ask("fault_rules", lambda: rpc.call(addr, GetFaultRules(), 2.0))
    obs["fault_rules"] = None if reply is None else [
        {"label": r.label, "drop": r.drop, "delay": r.delay, "src": sorted(r.src),
         "dst": sorted(r.dst)} for r in reply.rules]
    # coordinators: the region_lookup holder, and the target's catch-up pause
    holder: dict | None = None
    for name in control.names("coordinator"):
        diag = await ask(f"diag:{name}", lambda n=name: rpc.call(
            control.address(n), DiagnosticsRequest(), 2.0))
        if diag is None:
            continue
        body = diag.body or {}
        duty = ((body.get("grants") or {}).get("duties") or {}).get("region_lookup") or {}
        if duty.get("held_by_self"):
            holder = {"coordinator": name, "holder": duty.get("holder", ""),
                      "grant_id": duty.get("grant_id", ""), "era": duty.get("era", 0)}
        elif holder is None and duty.get("holder"):
            holder = {"coordinator": "", "holder": duty.get("holder", ""),
                      "grant_id": duty.get("grant_id", ""), "era": duty.get("era", 0)}
        if name == target:
            obs["catch_up_paused"] = bool(body.get("paused"))
            obs["pause_requests"] = int((body.get("counters") or {}).get("pause_requests", 0))
    obs["lookup_grant"] = holder
    # root: a snapshot of a metaroot peer (the leader when one says so)
    leader = None
    try:
        leader = await control.metaroot_leader()
    except Exception:  # noqa: BLE001, S110 - any peer will do
        pass
    peers = ([leader] if leader else []) + [n for n in control.names("metaroot") if n != leader]
    obs["root"] = None
    for name in peers:
        snap = await ask(f"snapshot:{name}", lambda n=name: rpc.call(
            control.address(n), SnapshotRequest(), 3.0))
        if snap is None:
            continue
        cp = snap.checkpoint
        obs["root"] = {
            "peer": name,
            "index": int(getattr(snap.token, "index", 0)),
            "grants": [{"grant_id": g.grant_id, "holder": g.holder, "era": g.era,
                        "issued_at_ms": g.issued_at_ms, "predecessors": list(g.predecessors)}
                       for g in cp.grants],
            "sealed": [{"grant_id": r.grant_id, "holder": r.holder, "era": r.era,
                        "retired_at_ms": r.retired_at_ms}
                       for r in cp.retirements if r.mode == RetirementMode.SEALED_EXACT],
            "recovery_records": _marked(cp.recovery_records),
        }
        break
    listed: list[dict] | None = None
    for addr_c in control.coordinator_addrs():
        reply = await ask(f"transitions:{addr_c}", lambda a=addr_c: rpc.call(
            a, ListTransitionsRequest(include_history=True), 3.0))
        if reply is not None:
            listed = (listed or []) + _marked(reply.recovery_records or [])
    obs["listed_recovery_records"] = listed
    # the target's log: refusal lines since the window began
    log_path = cluster.log_path(target) if cluster is not None else None
    if log_path is not None:
        try:
            size = log_path.stat().st_size
            obs["log_offset"] = size
            if log_offset is not None and size >= log_offset:
                with open(log_path, "rb") as fh:
                    fh.seek(max(log_offset, size - LOG_TAIL_MAX))
                    text = fh.read().decode("utf-8", "replace")
                obs["log_refusals"] = count_refusal_lines(text)
        except OSError as exc:
            obs["errors"]["log"] = str(exc)[:200]
    if not obs["errors"]:
        del obs["errors"]
    return obs


# -- judging a window ----------------------------------------------------------------------


def _culprits(attempts: Sequence[dict], effect: str) -> str:
    ops = CAUSES.get(effect, ())
    named = [f"{a['attempt']} ({a['kind']} {a['op']}"
             + (f" {a['failpoint']}={a['spec']}" if a.get("failpoint") else "") + ")"
             for a in attempts if a.get("op") in ops]
    return ", ".join(named) if named else "no attempt of this window asked for it"


def window_effects(attempts: Sequence[dict], before: dict | None, after: dict | None,
                   target: str | None = None) -> dict:
    """Judge one window: ``{"effects": [{"attempt", "effect"}], "unchecked": [..],
    "notes": [..], "refused": n, "reached": bool}``. An effect is anything the attempts
    changed (or an attempt that was not refused); ``unchecked`` lists what could not be
    observed. Pure: works on the recorded attempts and observations."""
    effects: list[dict] = []
    unchecked: list[str] = []
    notes: list[str] = []

    def effect(kind: str | None, text: str, attempt: dict | None = None) -> None:
        if attempt is not None:
            name = (f"{attempt.get('attempt')} ({attempt.get('kind')} {attempt.get('op')}"
                    + (f" {attempt['failpoint']}={attempt['spec']}"
                       if attempt.get("failpoint") else "") + ")")
        else:
            name = _culprits(attempts, kind or "")
        effects.append({"attempt": name, "effect": text})

    for a in attempts:
        if a.get("outcome") == "accepted":
            effect(None, f"not refused: {a.get('answer')}", a)
    refused = sum(1 for a in attempts if a.get("outcome") == "refused")
    who = target or "the target"
    if not before or not after:
        unchecked.append("observations (the window has no before/after observation)")
        return {"effects": effects, "unchecked": unchecked, "notes": notes,
                "refused": refused, "reached": refused > 0}
    # the process (a churn store fault may stop or restart a store: a note then; an attempt
    # that could have done it, FailpointSet, is an effect of its own when not refused)
    down = None
    if not after.get("alive"):
        down = f"{who} is not running at the window's end (pid {before.get('pid')})"
    elif before.get("pid") and after.get("pid") and before["pid"] != after["pid"]:
        down = f"{who} was restarted during the window (pid {before['pid']} -> {after['pid']})"
    if down and after.get("churn_overlap") and kind_of(target) == "store":
        notes.append(f"{down}; a churn store fault ran meanwhile")
    elif down:
        effect("process", down)
    # failpoints
    fb, fa = before.get("failpoints"), after.get("failpoints")
    if fa is None or fb is None:
        if after.get("alive"):
            unchecked.append("failpoints")
    else:
        changed = {k: v for k, v in fa.items() if fb.get(k) != v}
        cleared = sorted(k for k in fb if k not in fa)
        if changed:
            effect("failpoints", f"failpoint(s) {changed} active on {who}")
        if cleared:
            effect("failpoints", f"failpoint(s) {cleared} cleared on {who}")
    # fault rules
    rb, ra = before.get("fault_rules"), after.get("fault_rules")
    if ra is None or rb is None:
        if after.get("alive"):
            unchecked.append("fault_rules")
    else:
        hostile = [r for r in ra if str(r.get("label", "")).startswith(MARKER_PREFIX)]
        if hostile:
            effect("fault_rules", f"{who} holds the attacker's fault rules "
                   f"{[r['label'] for r in hostile]}")
        elif ra != rb:
            effect("fault_rules", f"{who}'s fault rules changed: {rb} -> {ra}")
    # root: recovery records with a hostile marker
    root_b, root_a = before.get("root"), after.get("root")
    listed_a = after.get("listed_recovery_records")
    seen_before = {r["transition_id"] for r in (root_b or {}).get("recovery_records", [])}
    seen_before |= {r["transition_id"] for r in before.get("listed_recovery_records") or []}
    forged = [r for r in ((root_a or {}).get("recovery_records", []) + (listed_a or []))
              if r["transition_id"] not in seen_before]
    if root_a is None and listed_a is None:
        unchecked.append("recovery_records")
    elif forged:
        ids = sorted({r["transition_id"] for r in forged})
        effect("recovery", f"root holds RECOVERY_RECORDED event(s) {ids} with a hostile marker")
    # grants: a grant live at the start sealed since, without a same-instant successor
    if root_b is None or root_a is None:
        unchecked.append("grants")
    else:
        live = {g["grant_id"]: g for g in root_b.get("grants", [])}
        for r in root_a.get("sealed", []):
            if r["grant_id"] not in live:
                continue
            successor = [g for g in root_a.get("grants", [])
                         if r["grant_id"] in g.get("predecessors", [])
                         and g.get("issued_at_ms") == r.get("retired_at_ms")
                         and g.get("holder") == r.get("holder")]
            if successor:
                notes.append(f"grant {r['grant_id']} re-issued in place as "
                             f"{successor[0]['grant_id']} by its holder")
                continue
            effect("grant", f"grant {r['grant_id']} of {r['holder']} (era {r['era']}) was "
                   f"sealed during the window")
    gb, ga = before.get("lookup_grant"), after.get("lookup_grant")
    if gb and ga:
        if gb.get("grant_id") == ga.get("grant_id") and gb.get("holder") == ga.get("holder"):
            notes.append(f"region_lookup held by {ga.get('holder')} throughout (era "
                         f"{ga.get('era')})")
        else:
            notes.append(f"region_lookup moved {gb.get('holder')} ({gb.get('grant_id')}) -> "
                         f"{ga.get('holder')} ({ga.get('grant_id')}), not by a seal")
    # a coordinator's catch-up pause
    if "catch_up_paused" in after:
        if after.get("catch_up_paused") and not before.get("catch_up_paused"):
            effect("catch_up", f"{who} stopped applying root deltas (catch-up paused)")
        elif int(after.get("pause_requests", 0)) > int(before.get("pause_requests", 0)):
            effect("catch_up", f"{who} served PauseCatchUp ({before.get('pause_requests')} -> "
                   f"{after.get('pause_requests')} requests)")
    if refused == 0:
        unchecked.append("no attempt was refused by the server (none reached it)")
    return {"effects": effects, "unchecked": unchecked, "notes": notes, "refused": refused,
            "reached": refused > 0}


def window_verdict(judged: dict) -> Any:
    if judged["effects"]:
        return False
    if judged["unchecked"]:
        return "unknown"
    return True


# -- the run's check -----------------------------------------------------------------------


def _value(event: dict) -> dict:
    value = event.get("value")
    return value if isinstance(value, dict) else {}


def check_history(events: Iterable[dict]) -> dict:
    """``checks["hostile"]``: every ``hostile`` window of a history judged again from its
    recorded attempts and observations (:func:`window_effects`). INVALID when a window had an
    effect; unknown when a window could not be checked or no window made an attempt."""
    windows: dict[str, dict] = {}
    order: list[str] = []
    for event in events:
        if not is_nemesis(event):
            continue
        value = _value(event)
        if value.get("fault") != "hostile":
            continue
        marker = value.get("window") or value.get("marker") or ""
        if not marker:
            continue
        w = windows.get(marker)
        if w is None:
            w = windows[marker] = {"target": value.get("target"), "attempts": [], "stop": None,
                                   "start_ns": event.get("time")}
            order.append(marker)
        if event.get("f") == "event":
            w["attempts"].append(value)
        elif event.get("f") == "stop":
            w["stop"] = value
    by_kind = {k: {"made": 0, "refused": 0} for k in KINDS}
    effects: list[dict] = []
    unchecked: list[dict] = []
    skipped: list[dict] = []
    attempts = 0
    judged_windows = 0
    for marker in order:
        w = windows[marker]
        for a in w["attempts"]:
            row = by_kind.setdefault(a.get("kind", "?"), {"made": 0, "refused": 0})
            row["made"] += 1
            row["refused"] += a.get("outcome") == "refused"
        attempts += len(w["attempts"])
        stop = w["stop"]
        if stop is None:
            unchecked.append({"window": marker, "target": w["target"],
                              "what": "the window never stopped (no check)"})
            continue
        if stop.get("skipped"):
            skipped.append({"window": marker, "target": w["target"], "why": stop["skipped"]})
            continue
        judged_windows += 1
        judged = window_effects(w["attempts"], stop.get("before"), stop.get("after"),
                                w["target"])
        for e in judged["effects"]:
            effects.append({"window": marker, "target": w["target"], **e})
        for u in judged["unchecked"]:
            unchecked.append({"window": marker, "target": w["target"], "what": u})
    kinds = ", ".join(f"{k} {v['refused']}/{v['made']}" for k, v in by_kind.items())
    result: dict[str, Any] = {"windows": len(order), "checked": judged_windows,
                              "skipped": skipped, "attempts": attempts, "by_kind": by_kind,
                              "effects": effects, "unchecked": unchecked}
    if effects:
        e = effects[0]
        more = f" (+{len(effects) - 1} more)" if len(effects) > 1 else ""
        result["valid"] = False
        result["note"] = (f"window {e['window']} on {e['target']}: attempt {e['attempt']}: "
                          f"{e['effect']}{more}")
    elif unchecked or not judged_windows:
        result["valid"] = "unknown"
        why = unchecked[0] if unchecked else {"what": "no window was checked"}
        result["note"] = (f"{why.get('window', '')} {why.get('target') or ''}: "
                          f"{why['what']}").strip()
    else:
        result["valid"] = True
        result["note"] = (f"{judged_windows} windows, {attempts} attempts refused/made by kind: "
                          f"{kinds}; 0 effects")
    return result
