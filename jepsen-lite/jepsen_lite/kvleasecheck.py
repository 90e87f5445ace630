"""The kvlease checker: keys written with a lease, against the lease operations around them.

Input: the run's history (operations recorded by :mod:`.kvleaseload`: ``grant``,
``keep-alive`` and ``revoke`` with the lease's label as their key, ``put`` with the label in
the invoke's ``lease`` field and a unique integer value, ``read`` (a linearizable get: the
value, or None), ``leases`` (the labels the listing found)) and, optionally, the run's
``kvlease-events.jsonl`` (a ``config`` record: ``bound``, ``clock_drift``; ``leader``
records: which store led the lease records' region, and the keys' region, from when).

Times are the history's monotonic nanoseconds. For a lease L with TTL T:

* its floor: the latest INVOKE of an acknowledged ``grant`` or ``keep-alive`` of L, plus
  ``T * (1 - clock_drift)``. The authority's deadline is at least the arrival of a
  keep-alive plus T (a new authority's: its takeover plus T), measured by a clock that may
  run ``clock_drift`` (default 2 %) off ours;
* its last end: the latest COMPLETION of a ``grant`` or ``keep-alive`` of L in any outcome
  (an indeterminate one counts by the time the client gave up: the request carries its
  deadline, so a store acts on it no later; one never completed leaves L unbounded).

Violations:

* ``early_delete``: a read that completed before L's floor found the key absent, although a
  put of it with L was acknowledged before the read was invoked, no revoke of L (in any
  outcome) was invoked before the read completed, and no other write of the key (not
  definitely failed) could have come after that put and before the read;
* ``early_expiry``: the lease itself was found gone (a keep-alive, or the lease check of a
  put, answered ``lease_not_found``; or the final listing missed it) before its floor, with
  no revoke of L invoked before;
* ``overlive``: a read invoked later than ``max(last end + T, end of the put) + bound``
  (``bound`` default 2 s) found the key (the put's end: a put whose lease check passed just
  before the lease went still writes the key, and the next sweep takes it); or the final
  listing still held L;
* ``overlive_revoked``: the same after an acknowledged revoke: a read invoked later than
  ``max(revoke's completion, end of the put) + bound`` found the key (the sweeper deletes the
  keys of a revoked lease within about a second, docs/protocols.md "Leases");
* ``phantom`` / ``failed_put_seen``: a value no put of that key carried, or one that
  definitely failed.

That is the issue's bound (``failover`` off, the default): it holds only while the authority
and the sweeper stay put. With ``failover`` on, the limits follow docs/protocols.md "Leases"
instead. A failover is a change of leader in the ``leader`` records: taken when the new
leader was first seen, lost at the start of a fault window on the old leader during its
term (else when the new one was seen). An authority lost before the deadline plus
``bound`` moves the deadline to the takeover plus T (a new authority gives every lease a
full TTL from when it took over); an authority or keys' region leader lost before a limit
moves the limit to the takeover plus ``bound`` (a new leader sweeps afresh). Every
``overlive`` names the takeovers between the lease's last end (or the revoke) and the read
either way.

Violations are reported once per rule and key (or lease): the earliest early one, the latest
late one, with how many operations broke that rule there, the operations involved and the
fault windows between the lease's last keep-alive and the read. Figures: leases, keys, reads
(present / absent), grants, keep-alives, puts and revokes by outcome, the largest observed
lifetime past the last keep-alive (read invoke minus the lease's last end, over reads that
found the key), the earliest absence (read completion minus the latest acknowledged
keep-alive's invoke, over reads held to the early-delete rule: at least T when valid), how
many leases were seen gone, and which fault windows hit the lease authority or the keys'
region leader.

Never reads a cluster; pure over the two inputs, so a run can be checked again offline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .history import History, Operation

KVLEASE_EVENTS = "kvlease-events.jsonl"
DEFAULT_BOUND = 2.0  # seconds a key may outlive its lease's TTL
DEFAULT_CLOCK_DRIFT = 0.02  # share of the TTL the authority's clock may run fast
DEFAULT_TTL = 3.0
NOT_FOUND = "lease_not_found"
KINDS = ("early_delete", "early_expiry", "overlive", "overlive_revoked", "phantom",
         "failed_put_seen")
NS = 1_000_000_000


@dataclass(slots=True)
class Lease:
    label: str
    ttl: float
    anchors: list[Operation] = field(default_factory=list)  # acknowledged grant / keep-alive
    extenders: list[Operation] = field(default_factory=list)  # grant / keep-alive, any outcome
    revokes: list[Operation] = field(default_factory=list)
    granted: bool = False

    def floor(self, drift: float) -> tuple[int, Operation] | None:
        """(the earliest the lease may go, the anchor it is counted from)."""
        if not self.anchors:
            return None
        a = max(self.anchors, key=lambda op: op.call)
        return a.call + int(self.ttl * (1.0 - drift) * NS), a

    def last_end(self) -> tuple[float, Operation | None]:
        """(the latest completion of a grant or keep-alive in any outcome, that op);
        ``inf`` when one never completed, ``-inf`` with none."""
        best: tuple[float, Operation | None] = (-math.inf, None)
        for op in self.extenders:
            t = end_of(op)
            if t is None:
                return math.inf, op
            if t > best[0]:
                best = (t, op)
        return best

    def revoked_before(self, t: int) -> Operation | None:
        return next((v for v in self.revokes if v.call < t), None)


def end_of(op: Operation) -> int | None:
    """The completion time in any outcome (None: never completed)."""
    return op.completion["time"] if op.completion is not None else None


def load_records(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _leases(ops: list[Operation], default_ttl: float) -> dict[str, Lease]:
    leases: dict[str, Lease] = {}

    def lease(label: str) -> Lease:
        if label not in leases:
            leases[label] = Lease(label, default_ttl)
        return leases[label]

    for op in ops:
        if op.f == "grant" and isinstance(op.key, str):
            ls = lease(op.key)
            if isinstance(op.input, (int, float)) and not isinstance(op.input, bool):
                ls.ttl = float(op.input)
            ls.extenders.append(op)
            if op.status == "ok":
                ls.anchors.append(op)
                ls.granted = True
        elif op.f == "keep-alive" and isinstance(op.key, str):
            ls = lease(op.key)
            ls.extenders.append(op)
            if op.status == "ok":
                ls.anchors.append(op)
        elif op.f == "revoke" and isinstance(op.key, str):
            lease(op.key).revokes.append(op)
    return leases


class _Context:
    """What every rule needs besides the operations: the nemesis windows, the first event's
    time (for seconds), the leader changes and the limits' mode."""

    def __init__(self, history: History, records: list, failover: bool, bound_ns: int):
        self.t0 = history.events[0]["time"] if history.events else 0
        self.windows = history.nemesis_intervals()
        self.changes = failovers(records, self.windows, "authority")
        self.sweeper_changes = sorted(set(self.changes)
                                      | set(failovers(records, self.windows, "keys")))
        self.failover = failover
        self.bound_ns = bound_ns

    def expiry_limit(self, last: float, ttl_ns: int, written: float) -> float:
        """The latest a key of a lease whose last grant or keep-alive ended at ``last`` (and
        that was written at ``written``) may be found: the last end plus the TTL, plus the
        bound; with ``failover``, an authority lost before the deadline plus the bound
        restarts the TTL at the takeover, and a sweeper lost before the limit restarts the
        bound (:meth:`sweep_limit`)."""
        d = last + ttl_ns
        if self.failover:
            for lost, taken in self.changes:
                if taken <= last:
                    continue
                if lost > d + self.bound_ns:
                    break
                d = max(d, taken + ttl_ns)
        return self.sweep_limit(max(d, written), last)

    def sweep_limit(self, gone: float, since: float) -> float:
        """``gone`` plus the bound; with ``failover``, each authority or keys' region leader
        taken over after ``since`` and lost before the limit moves it to the takeover plus
        the bound."""
        limit = gone + self.bound_ns
        if self.failover:
            for lost, taken in self.sweeper_changes:
                if taken <= since:
                    continue
                if lost > limit:
                    break
                limit = max(limit, taken + self.bound_ns)
        return limit

    def changes_between(self, lo: float, hi: float) -> list[float | None]:
        return [self.s(taken) for _, taken in self.sweeper_changes if lo < taken <= hi][:8]

    def s(self, t: float | None) -> float | None:
        if t is None or not math.isfinite(t):
            return None
        return round((t - self.t0) / NS, 3)

    def faults_between(self, lo: float, hi: float) -> list[str]:
        out = []
        for w in self.windows:
            stop = w.stop if w.stop is not None else math.inf
            if w.start <= hi and stop >= lo:
                out.append(f"{w.fault} {w.target or ''} {self.s(w.start)}-{self.s(w.stop)}s")
        return out[:8]

    def brief(self, op: Operation | None) -> dict | None:
        if op is None:
            return None
        out = {"op": op.id, "f": op.f, "key": op.key, "status": op.status,
               "invoke_s": self.s(op.call), "end_s": self.s(end_of(op))}
        if op.f in ("put", "grant", "keep-alive", "revoke"):
            out["value"] = op.input
        if op.f in ("read", "leases"):
            out["value"] = op.output
        if op.invoke.get("lease") is not None:
            out["lease"] = op.invoke["lease"]
        if op.completion is not None and op.completion.get("error"):
            out["error"] = op.completion["error"]
        return out


def check_kvlease(history: History | Iterable[dict], records: Iterable[Mapping] = (), *,
                  bound: float | None = None, clock_drift: float | None = None,
                  failover: bool | None = None) -> dict:
    """Check a kvlease history (see the module docstring); the options default to the
    ``config`` record's, else to the issue's bound (2 s, no allowance for a failover)."""
    if not isinstance(history, History):
        history = History(list(history))
    records = list(records)
    config = next((r for r in records if r.get("type") == "config"), {})
    bound = float(bound if bound is not None else config.get("bound", DEFAULT_BOUND))
    drift = float(clock_drift if clock_drift is not None
                  else config.get("clock_drift", DEFAULT_CLOCK_DRIFT))
    default_ttl = float(config.get("ttl", DEFAULT_TTL))
    if failover is None:
        failover = bool(config.get("failover", False))
    bound_ns = int(bound * NS)
    ctx = _Context(history, records, failover, bound_ns)
    ops = history.operations()
    leases = _leases(ops, default_ttl)
    writes: dict[str, list[Operation]] = {}
    for op in ops:
        if op.f in ("put", "delete") and isinstance(op.key, str):
            writes.setdefault(op.key, []).append(op)
    violations: list[dict] = []
    stats: dict[str, Any] = {"reads": 0, "present": 0, "absent": 0, "early_checked": 0,
                             "final_reads": 0, "max_past": None, "earliest_absence": None,
                             "gone": set()}
    for op in ops:
        if op.f == "read" and op.status == "ok" and isinstance(op.key, str):
            stats["reads"] += 1
            stats["final_reads"] += bool(op.invoke.get("final"))
            if op.output is None:
                stats["absent"] += 1
                _check_absent(op, writes.get(op.key, []), leases, drift, ctx, violations, stats)
            else:
                stats["present"] += 1
                _check_present(op, writes.get(op.key, []), leases, ctx, violations, stats)
        elif op.f in ("keep-alive", "put") and op.status == "fail" and \
                (op.completion or {}).get("error") == NOT_FOUND:
            label = op.key if op.f == "keep-alive" else op.invoke.get("lease")
            if label in leases:
                _check_lost(op, leases[label], drift, ctx, violations, "answered lease_not_found")
        elif op.f == "leases" and op.status == "ok" and isinstance(op.output, list):
            _check_listing(op, leases, drift, ctx, violations)
    return _result(ops, leases, writes, _worst(violations), stats, ctx, records, bound, drift)


WORST = {"early_delete": ("absent_after_s", min), "early_expiry": ("gone_after_s", min),
         "overlive": ("past_last_keep_alive_s", max), "overlive_revoked": ("past_revoke_s", max)}


def _worst(violations: list[dict]) -> list[dict]:
    """One violation per kind and key (or lease): the earliest early one, the latest late
    one, with ``operations``, how many operations broke that rule there."""
    groups: dict[tuple, list[dict]] = {}
    for v in violations:
        groups.setdefault((v["kind"], v.get("key"), v.get("lease"), v.get("what")), []).append(v)
    out = []
    for (kind, *_), vs in groups.items():
        field_, pick = WORST.get(kind, (None, None))
        v = pick(vs, key=lambda x: x.get(field_) or 0) if pick is not None else vs[0]
        out.append({**v, "operations": len(vs)})
    return out


def _check_absent(r: Operation, writes: list[Operation], leases: dict[str, Lease],
                  drift: float, ctx: _Context, violations: list[dict], stats: dict) -> None:
    acked = [w for w in writes if w.f == "put" and w.status == "ok" and w.ret < r.call]
    if not acked:
        return
    p = max(acked, key=lambda w: w.call)
    label = p.invoke.get("lease")
    lease = leases.get(label) if label is not None else None
    if lease is None:
        return
    for w in writes:  # another write that may have come after p and before the read
        if w is p or w.status == "fail" or w.call >= r.ret:
            continue
        if w.ret is not None and w.ret < p.call:
            continue
        return
    if lease.revoked_before(r.ret) is not None:
        stats["gone"].add(label)
        return
    floor = lease.floor(drift)
    if floor is None:
        return
    stats["early_checked"] += 1
    t, anchor = floor
    past = (r.ret - anchor.call) / NS
    if stats["earliest_absence"] is None or past < stats["earliest_absence"][0]:
        stats["earliest_absence"] = (past, r.id, label)
    if r.ret < t:
        violations.append({
            "kind": "early_delete", "key": r.key, "lease": label, "ttl": lease.ttl,
            "read": ctx.brief(r), "put": ctx.brief(p), "anchor": ctx.brief(anchor),
            "absent_after_s": round(past, 3),
            "faults": ctx.faults_between(anchor.call, r.ret)})
    elif r.call >= anchor.call + lease.ttl * NS:
        stats["gone"].add(label)


def _check_present(r: Operation, writes: list[Operation], leases: dict[str, Lease],
                   ctx: _Context, violations: list[dict], stats: dict) -> None:
    p = next((w for w in writes if w.f == "put" and w.input == r.output), None)
    if p is None:
        violations.append({"kind": "phantom", "key": r.key, "read": ctx.brief(r)})
        return
    if p.status == "fail":
        violations.append({"kind": "failed_put_seen", "key": r.key, "read": ctx.brief(r),
                           "put": ctx.brief(p)})
        return
    label = p.invoke.get("lease")
    lease = leases.get(label) if label is not None else None
    p_end = end_of(p)
    if lease is None or p_end is None:
        return
    last, last_op = lease.last_end()
    if math.isfinite(last):
        past = (r.call - last) / NS
        if stats["max_past"] is None or past > stats["max_past"][0]:
            stats["max_past"] = (past, r.id, label, lease.ttl)
        limit = ctx.expiry_limit(last, int(lease.ttl * NS), p_end)
        if r.call > limit:
            violations.append({
                "kind": "overlive", "key": r.key, "lease": label, "ttl": lease.ttl,
                "read": ctx.brief(r), "put": ctx.brief(p), "last_keep_alive": ctx.brief(last_op),
                "past_last_keep_alive_s": round(past, 3),
                "past_limit_s": round((r.call - limit) / NS, 3),
                "leader_changes_s": ctx.changes_between(last, r.call),
                "faults": ctx.faults_between(last, r.call)})
    for v in lease.revokes:
        if v.status != "ok":
            continue
        limit = ctx.sweep_limit(max(v.ret, p_end), v.ret)
        if r.call > limit:
            violations.append({
                "kind": "overlive_revoked", "key": r.key, "lease": label,
                "read": ctx.brief(r), "put": ctx.brief(p), "revoke": ctx.brief(v),
                "past_revoke_s": round((r.call - v.ret) / NS, 3),
                "leader_changes_s": ctx.changes_between(v.ret, r.call),
                "faults": ctx.faults_between(v.ret, r.call)})
            break


def _check_lost(op: Operation, lease: Lease, drift: float, ctx: _Context,
                violations: list[dict], what: str) -> None:
    """``op`` (completed) found ``lease`` gone: early unless before its floor a revoke was
    invoked."""
    if lease.revoked_before(op.ret) is not None:
        return
    floor = lease.floor(drift)
    if floor is None:
        return
    t, anchor = floor
    if op.ret < t:
        violations.append({
            "kind": "early_expiry", "lease": lease.label, "ttl": lease.ttl, "what": what,
            "op": ctx.brief(op), "anchor": ctx.brief(anchor),
            "gone_after_s": round((op.ret - anchor.call) / NS, 3),
            "faults": ctx.faults_between(anchor.call, op.ret)})


def _check_listing(s: Operation, leases: dict[str, Lease], drift: float, ctx: _Context,
                   violations: list[dict]) -> None:
    listed = set(s.output)
    for label, lease in sorted(leases.items()):
        if label not in listed:
            if lease.granted:
                _check_lost(s, lease, drift, ctx, violations, "missing from the listing")
            continue
        last, last_op = lease.last_end()
        if math.isfinite(last) and s.call > ctx.expiry_limit(last, int(lease.ttl * NS), last):
            violations.append({
                "kind": "overlive", "lease": label, "ttl": lease.ttl, "what": "record listed",
                "listing": ctx.brief(s), "last_keep_alive": ctx.brief(last_op),
                "past_last_keep_alive_s": round((s.call - last) / NS, 3),
                "faults": ctx.faults_between(last, s.call)})
        v = next((v for v in lease.revokes if v.status == "ok"
                  and s.call > ctx.sweep_limit(v.ret, v.ret)), None)
        if v is not None:
            violations.append({
                "kind": "overlive_revoked", "lease": label, "what": "record listed",
                "listing": ctx.brief(s), "revoke": ctx.brief(v),
                "past_revoke_s": round((s.call - v.ret) / NS, 3)})


def failovers(records: Iterable[Mapping], windows: Iterable[Any],
              role: str) -> list[tuple[int, int]]:
    """``(lost, taken)`` per change of leader of ``role`` in the ``leader`` records, by
    ``lost``: ``taken`` when a store other than the previous record's was first seen (or any
    store after an unknown leader, 0: it may be the same store in a new term, which also
    starts every lease afresh); ``lost`` the start of the first fault window on the old
    leader since it was first seen, if one began before ``taken``, else ``taken``."""
    windows = list(windows)
    out: list[tuple[int, int]] = []
    prev: Any = None  # the previous record's store (0: unknown)
    last, since = 0, 0  # the last known leader, and when its term was first seen
    for r in sorted((r for r in records if r.get("type") == "leader"
                     and r.get("role") == role and isinstance(r.get("time"), int)),
                    key=lambda r: r["time"]):
        store, t = r.get("store") or 0, r["time"]
        if store and prev is not None and store != prev:
            starts = [w.start for w in windows
                      if last and w.target == f"store-{last}" and since <= w.start <= t]
            out.append((min([t, *starts]), t))
            since = t
        elif store and prev is None:
            since = t
        last = store or last
        prev = store
    return sorted(out)


def coverage(windows: Iterable[Any], records: Iterable[Mapping]) -> dict[str, dict[str, int]]:
    """Fault windows (``History.nemesis_intervals``) by fault whose target led the lease
    records' region (``authority``) or the keys' region (``keys``) when the window opened
    (the ``leader`` records)."""
    samples: dict[str, list[tuple[int, Any]]] = {}
    for r in records:
        if r.get("type") == "leader" and isinstance(r.get("time"), int):
            samples.setdefault(str(r.get("role")), []).append((r["time"], r.get("store")))
    out: dict[str, dict[str, int]] = {"authority": {}, "keys": {}}
    for w in windows:
        for role in out:
            before = [s for t, s in samples.get(role, []) if t <= w.start]
            if before and before[-1] and w.target == f"store-{before[-1]}":
                out[role][str(w.fault)] = out[role].get(str(w.fault), 0) + 1
    return out


def _result(ops: list[Operation], leases: dict[str, Lease], writes: dict[str, list],
            violations: list[dict], stats: dict, ctx: _Context, records: list,
            bound: float, drift: float) -> dict:
    by_f: dict[str, dict[str, int]] = {}
    for op in ops:
        if op.f in ("grant", "keep-alive", "revoke", "put"):
            row = by_f.setdefault(op.f, {})
            row[op.status] = row.get(op.status, 0) + 1
    counts = {k: 0 for k in KINDS}  # operations that broke each rule
    for v in violations:
        counts[v["kind"]] = counts.get(v["kind"], 0) + v["operations"]
    keys = sum(1 for ws in writes.values() if any(w.status == "ok" for w in ws))
    granted = sum(1 for ls in leases.values() if ls.granted)
    max_past = stats["max_past"]
    earliest = stats["earliest_absence"]
    cov = coverage(ctx.windows, records)
    valid: Any = not violations
    if valid and (not stats["reads"] or not keys):
        valid = "unknown"
    note = (f"{granted} leases granted, {keys} keys, {stats['reads']} reads "
            f"({stats['present']} found, {stats['absent']} absent); "
            f"max lifetime past the last keep-alive "
            f"{'-' if max_past is None else f'{max_past[0]:.2f} s'} "
            f"(limit TTL + {bound:g} s{', failovers as documented' if ctx.failover else ''}); earliest absence "
            f"{'-' if earliest is None else f'{earliest[0]:.2f} s'} after a keep-alive")
    if violations:
        note += "; " + ", ".join(f"{k} {n}" for k, n in counts.items() if n)
    return {
        "valid": valid, "violations": violations, "note": note,
        "counts": counts, "bound_s": bound, "clock_drift": drift,
        "failover": ctx.failover, "authority_changes": len(ctx.changes),
        "leases": len(leases), "leases_granted": granted, "keys": keys,
        "reads": stats["reads"], "reads_present": stats["present"],
        "reads_absent": stats["absent"], "final_reads": stats["final_reads"],
        "reads_held_to_early_rule": stats["early_checked"],
        "leases_seen_gone": len(stats["gone"]),
        "ops": by_f,
        "max_past_last_keep_alive_s": None if max_past is None else round(max_past[0], 3),
        "max_past_detail": None if max_past is None else
        {"read": max_past[1], "lease": max_past[2], "ttl": max_past[3]},
        "earliest_absence_s": None if earliest is None else round(earliest[0], 3),
        "earliest_absence_detail": None if earliest is None else
        {"read": earliest[1], "lease": earliest[2]},
        "faults_on_authority": cov["authority"], "faults_on_key_leader": cov["keys"],
    }


def check_run_dir(history: History, run_dir: str | Path) -> dict:
    """``checks["kvlease"]`` of a run directory (with its ``kvlease-events.jsonl``)."""
    path = Path(run_dir) / KVLEASE_EVENTS
    records = load_records(path) if path.exists() else []
    return check_kvlease(history, records)


def kvlease_lines(check: Mapping | None, limit: int = 10) -> list[str]:
    """The kvlease check in the run summary: its figures, then each violation (at most
    ``limit``)."""
    if not check:
        return []
    lines = [f"kvlease: {check.get('note', '')}"]
    ops = check.get("ops") or {}
    if ops:
        lines.append("kvlease ops: " + "; ".join(
            f"{f} " + ", ".join(f"{k} {v}" for k, v in sorted(row.items()))
            for f, row in sorted(ops.items())))
    auth, keys = check.get("faults_on_authority"), check.get("faults_on_key_leader")
    if auth is not None:
        lines.append(f"kvlease faults on the lease authority: {_counts(auth)}; on the keys' "
                     f"region leader: {_counts(keys or {})}; leases seen gone "
                     f"{check.get('leases_seen_gone', 0)}")
    for v in (check.get("violations") or [])[:limit]:
        rest = {k: v[k] for k in v if k != "kind"}
        lines.append(f"  {v.get('kind')}: {json.dumps(rest, default=str)[:400]}")
    return lines


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "none"


__all__ = ["KVLEASE_EVENTS", "check_kvlease", "check_run_dir", "coverage", "failovers",
           "kvlease_lines", "load_records"]
