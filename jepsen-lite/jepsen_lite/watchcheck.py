"""The watch checker: what every watcher saw, against the writes the history records.

Input: the run's history (the ``write`` and ``cas`` operations on watched keys, each value
unique) and the watch records (``watch-events.jsonl``, written by :mod:`.watchload`): per
watcher an ``open`` record (its prefix, when it opened), one ``event`` record per change it
was handed, in the order it was handed, and an ``end`` record (its outcome). The rules,
for each watcher and each key of its prefix (etcd's watch guarantees, Jepsen style):

* ``outside_prefix``: an event of a key the watcher did not ask for;
* ``not_a_put``: the workload never deletes; a delete event is wrong;
* ``phantom``: a value no write of that key carried; ``failed_write_seen``: the value of a
  write that definitely failed;
* ``duplicate``: the same revision, or the same value, handed twice;
* ``out_of_order``: a revision (version, index, seq) not above the key's previous one;
* ``realtime_order``: a write handed after one that was invoked only after it was
  acknowledged (the watched order must be an order the writes could have applied in);
* ``index_mismatch``: a put acknowledged at raft index i handed with another index (a change
  keeps its revision when its key moves region);
* ``lost``: an acknowledged write missing although a later write of the key was handed
  (invoked after the ack, so applied after it). Every watcher that ended normally saw the
  final marker write of every key, so for it every acknowledged write is required;
* ``seen_before_open``: a write acknowledged before the watch began opening was handed (a
  watch that starts now starts after every acknowledged write);
* ``token_repaired``: a failed watch's resume token held a segment outside the prefix or an
  empty one, and the watcher (workload option ``repair_tokens``) went on from it clipped.

A write of unknown outcome may be handed once, or not at all. Across watchers of one prefix,
each key's sequence of (value, revision) must be a prefix of the longest one (``disagree``):
watchers that finished saw the same sequence. The outcome of each watcher is its own line:
``complete`` (saw every marker), ``compacted`` (``WatchCompactedError``: invalid unless the
run kept a tiny change log on purpose, ``expect_compacted``), ``deadline`` (never saw a
marker), ``error`` (gave up after repeated failures), and, unknown rather than invalid,
``no_marker`` (a marker write was never acknowledged) and ``aborted`` (the run ended early).

Never reads a cluster; pure over the two inputs, so a run can be checked again offline.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .history import History, Operation, operations_of

WATCH_EVENTS = "watch-events.jsonl"
WRITE_FS = ("write", "cas")
BAD_OUTCOMES = ("deadline", "error")


@dataclass(slots=True)
class Write:
    key: str
    value: Any
    status: str  # ok / info / pending / fail
    call: int
    ret: int | None  # the ack's time (None: not acknowledged)
    applied_index: int | None
    op: int

    @property
    def acked(self) -> bool:
        return self.status == "ok"

    def brief(self) -> dict:
        return {"value": self.value, "status": self.status, "op": self.op,
                "applied_index": self.applied_index}


def load_records(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def watched_writes(ops: Iterable[Operation], prefixes: Iterable[str]) -> dict[str, dict]:
    """``{key: {value: Write}}`` for every write or cas on a key under ``prefixes``."""
    prefixes = tuple(prefixes)
    out: dict[str, dict] = {}
    for op in ops:
        if op.f not in WRITE_FS or not isinstance(op.key, str) or not op.key.startswith(prefixes):
            continue
        value = op.input if op.f == "write" else (op.input or [None, None])[1]
        completion = op.completion or {}
        ret = op.ret if op.status == "ok" else None
        out.setdefault(op.key, {})[_vkey(value)] = Write(
            op.key, value, op.status, op.call, ret, completion.get("applied_index"), op.id)
    return out


def _vkey(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def check_watch(history: History | Iterable[dict] | Iterable[Operation],
                records: Iterable[Mapping], *, expect_compacted: bool | None = None) -> dict:
    """Check the watch records against the history (see the module docstring)."""
    records = list(records)
    config = next((r for r in records if r.get("type") == "config"), {})
    if expect_compacted is None:
        expect_compacted = bool(config.get("expect_compacted"))
    watchers: dict[Any, dict] = {}
    for r in records:
        w = r.get("watcher")
        if w is None:
            continue
        st = watchers.setdefault(w, {"prefix": None, "opening": None, "opened": None,
                                     "events": [], "outcome": None, "resumes": 0,
                                     "detail": None})
        kind = r.get("type")
        if kind == "open":
            st["prefix"] = st["prefix"] or r.get("prefix")
            if st["opened"] is None:
                st["opening"], st["opened"] = r.get("opening"), r.get("opened")
            else:
                st["resumes"] += 1
        elif kind == "event":
            st["events"].append(r)
        elif kind == "end":
            st["outcome"], st["detail"] = r.get("outcome"), r.get("detail")
        elif kind == "repair":
            st.setdefault("repairs", []).append(r)
    prefixes = sorted({st["prefix"] for st in watchers.values() if st["prefix"]})
    writes = watched_writes(operations_of(history), prefixes)
    violations: list[dict] = []
    sequences: dict[str, dict[Any, list]] = {}  # key -> watcher -> [(value, revision)]
    per_watcher: dict[str, dict] = {}
    unknown_seen: set[tuple] = set()
    outcomes: dict[str, int] = {}
    unknown_reasons: list[str] = []
    for w, st in sorted(watchers.items(), key=lambda kv: str(kv[0])):
        outcome = st["outcome"] or "unfinished"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        seen = _check_watcher(w, st, writes, violations, sequences, unknown_seen)
        per_watcher[str(w)] = {"prefix": st["prefix"], "events": len(st["events"]),
                               "outcome": outcome, "resumes": st["resumes"], **seen}
        for r in st.get("repairs", ()):
            violations.append({"kind": "token_repaired", "watcher": w, "token": r.get("token"),
                               "repaired": r.get("repaired")})
        if outcome == "compacted":
            if not expect_compacted:
                violations.append({"kind": "compacted", "watcher": w, "detail": st["detail"]})
        elif outcome in ("no_marker", "aborted"):
            unknown_reasons.append(f"watcher {w}: {st['detail']}")
        elif outcome != "complete":
            violations.append({"kind": outcome if outcome in BAD_OUTCOMES else "unfinished",
                               "watcher": w, "detail": st["detail"]})
    _check_agreement(sequences, violations)
    ok_writes = sum(1 for ws in writes.values() for x in ws.values() if x.acked)
    unknown = [(k, x.value) for k, ws in writes.items() for x in ws.values()
               if x.status in ("info", "pending")]
    seen_unknown = sum(1 for u in unknown if (u[0], _vkey(u[1])) in unknown_seen)
    valid: Any = not violations
    if valid and unknown_reasons:
        valid = "unknown"
    if not watchers:
        valid = "unknown"
    events = sum(len(st["events"]) for st in watchers.values())
    note = (f"{len(watchers)} watchers on {len(prefixes)} prefixes, {events} events, outcomes "
            f"{_fmt_counts(outcomes)}; {ok_writes} acknowledged writes, {len(unknown)} unknown "
            f"({seen_unknown} seen, {len(unknown) - seen_unknown} never)")
    if unknown_reasons:
        note += "; " + "; ".join(unknown_reasons[:3])
    return {"valid": valid, "violations": violations, "note": note, "outcomes": outcomes,
            "events": events, "acknowledged_writes": ok_writes, "unknown_writes": len(unknown),
            "unknown_seen": seen_unknown, "expect_compacted": expect_compacted,
            "watchers": per_watcher}


def _check_watcher(w: Any, st: dict, writes: dict[str, dict], violations: list[dict],
                   sequences: dict, unknown_seen: set) -> dict:
    prefix = st["prefix"] or ""
    by_key: dict[str, list[dict]] = {}
    for ev in st["events"]:
        by_key.setdefault(ev.get("key"), []).append(ev)
    lost = 0
    for key in sorted(set(by_key) | {k for k in writes if k.startswith(prefix)}, key=str):
        events = by_key.get(key, [])
        known = writes.get(key, {})
        seq = sequences.setdefault(key, {}).setdefault(w, [])
        last_rev: tuple | None = None
        seen_values: dict[str, dict] = {}
        max_call: tuple[int, Any] | None = None  # (call, value) of the latest-invoked handed write
        for ev in events:
            where = {"watcher": w, "key": key, "value": ev.get("value"),
                     "revision": _rev(ev), "region_id": ev.get("region_id")}
            if not isinstance(key, str) or not key.startswith(prefix):
                violations.append({"kind": "outside_prefix", **where, "prefix": prefix})
                continue
            if ev.get("kind") != "put":
                violations.append({"kind": "not_a_put", **where, "event_kind": ev.get("kind")})
                continue
            rev = _rev(ev)
            if last_rev is not None and rev == last_rev:
                violations.append({"kind": "duplicate", **where, "what": "revision"})
            elif last_rev is not None and rev < last_rev:
                violations.append({"kind": "out_of_order", **where, "previous": list(last_rev)})
            last_rev = max(rev, last_rev) if last_rev is not None else rev
            vk = _vkey(ev.get("value"))
            if vk in seen_values:
                violations.append({"kind": "duplicate", **where, "what": "value",
                                   "first_revision": _rev(seen_values[vk])})
                continue
            seen_values[vk] = ev
            seq.append((vk, list(rev)))
            wr = known.get(vk)
            if wr is None:
                violations.append({"kind": "phantom", **where})
                continue
            if wr.status == "fail":
                violations.append({"kind": "failed_write_seen", **where, "op": wr.op})
            elif not wr.acked:
                unknown_seen.add((key, vk))
            if wr.applied_index is not None and wr.applied_index != ev.get("index"):
                violations.append({"kind": "index_mismatch", **where,
                                   "applied_index": wr.applied_index})
            if wr.ret is not None and st["opening"] is not None and wr.ret < st["opening"]:
                violations.append({"kind": "seen_before_open", **where, "op": wr.op})
            if max_call is not None and wr.ret is not None and max_call[0] > wr.ret:
                violations.append({"kind": "realtime_order", **where,
                                   "handed_before": max_call[1],
                                   "what": "acknowledged before the earlier-handed write "
                                           "was invoked"})
            if max_call is None or wr.call > max_call[0]:
                max_call = (wr.call, wr.value)
        if max_call is None:
            continue
        for vk, wr in known.items():
            if not wr.acked or vk in seen_values or wr.ret is None or wr.ret >= max_call[0]:
                continue
            if st["opened"] is not None and wr.call < st["opened"]:
                continue  # concurrent with the opening: either way
            lost += 1
            violations.append({"kind": "lost", "watcher": w, "key": key, **wr.brief(),
                               "later_seen": max_call[1]})
    return {"lost": lost, "keys": len(by_key)}


def _check_agreement(sequences: dict[str, dict[Any, list]], violations: list[dict]) -> None:
    """Per key, every watcher's (value, revision) sequence is a prefix of the longest."""
    for key, per in sorted(sequences.items()):
        if len(per) < 2:
            continue
        ref_w, ref = max(per.items(), key=lambda kv: (len(kv[1]), str(kv[0])))
        for w, seq in sorted(per.items(), key=lambda kv: str(kv[0])):
            if w == ref_w:
                continue
            for i, item in enumerate(seq):
                if item != ref[i]:
                    violations.append({
                        "kind": "disagree", "key": key, "watchers": [w, ref_w], "position": i,
                        "values": [json.loads(item[0]), json.loads(ref[i][0])],
                        "revisions": [item[1], ref[i][1]]})
                    break


def _rev(ev: Mapping) -> tuple[int, int, int]:
    return (int(ev.get("version") or 0), int(ev.get("index") or 0), int(ev.get("seq") or 0))


def _fmt_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def check_run_dir(history: History, run_dir: str | Path) -> dict:
    """``checks["watch"]`` of a run directory (its ``watch-events.jsonl``)."""
    path = Path(run_dir) / WATCH_EVENTS
    if not path.exists():
        return {"valid": "unknown", "note": f"no {WATCH_EVENTS}: the watchers never started"}
    return check_watch(history, load_records(path))


def watch_lines(check: Mapping | None, limit: int = 10) -> list[str]:
    """The watch check in the run summary: one line, then each violation (at most ``limit``)."""
    if not check:
        return []
    lines = [f"watch: {check.get('note', '')}"]
    for v in (check.get("violations") or [])[:limit]:
        rest = {k: v[k] for k in v if k != "kind"}
        lines.append(f"  {v.get('kind')}: {json.dumps(rest, default=str)[:200]}")
    return lines


__all__ = ["WATCH_EVENTS", "check_run_dir", "check_watch", "load_records", "watch_lines"]
