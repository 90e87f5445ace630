"""jepsen-lite run reports: op counts, results.json, the summary table, and the SVG plot.

Owns: turning a finished run (history, checker results, nemesis intervals, configuration)
into ``results.json``, the printed summary, ``plot.svg`` (latency and throughput over time
with the nemesis windows shaded; hand-written SVG, no plotting library) and, for an invalid
result, ``failing-subhistory.jsonl``. Never runs a cluster and never checks a history.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from .commands import format_table
from .history import History, is_nemesis
from .kvleasecheck import kvlease_lines
from .watchcheck import watch_lines

COMPLETION_COLORS = {"ok": "#2ca02c", "fail": "#d62728", "info": "#ff7f0e"}
FAULT_COLORS = {
    "kill": "#d62728",
    "pause": "#9467bd",
    "partition": "#ff7f0e",
    "lossy": "#8c564b",
    "slow-net": "#e377c2",
    "publish-fail": "#7f7f7f",
    "slow-fsync": "#bcbd22",
    "crash-point": "#17becf",
    "churn": "#1f77b4",
    "hostile": "#000000",
    "heal": "#2ca02c",
}


# -- verdicts and counts ----------------------------------------------------------------------


def combine_valid(values: Iterable[Any]) -> Any:
    """``False`` if any is ``False``; else ``"unknown"`` if any is not ``True``; else ``True``
    (an empty set of checks is ``"unknown"``)."""
    values = list(values)
    if any(v is False for v in values):
        return False
    if not values or any(v is not True for v in values):
        return "unknown"
    return True


def exit_code(valid: Any) -> int:
    return 0 if valid is True else 1 if valid is False else 2


def op_counts(history: History) -> dict:
    """Operation counts: total, by completion type, by ``f`` and type, and final reads."""
    by_type: dict[str, int] = {"ok": 0, "fail": 0, "info": 0, "pending": 0}
    by_f: dict[str, dict[str, int]] = {}
    final = 0
    ops = history.operations()
    for op in ops:
        by_type[op.status] = by_type.get(op.status, 0) + 1
        row = by_f.setdefault(op.f, {"ok": 0, "fail": 0, "info": 0, "pending": 0})
        row[op.status] = row.get(op.status, 0) + 1
        if op.invoke.get("final"):
            final += 1
    errors: dict[str, int] = {}
    for op in ops:
        if op.completion is not None and op.status != "ok":
            label = op.completion.get("error") or "(no error)"
            errors[label] = errors.get(label, 0) + 1
    return {
        "total": len(ops),
        "by_type": by_type,
        "by_f": dict(sorted(by_f.items())),
        "final_reads": final,
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
    }


def nemesis_summary(history: History, t0: int | None = None) -> list[dict]:
    """Nemesis windows from the history, times in seconds after ``t0`` (default: the first
    event)."""
    if t0 is None:
        t0 = history.events[0]["time"] if history.events else 0
    out = []
    for interval in history.nemesis_intervals():
        value = interval.value if isinstance(interval.value, dict) else {}
        out.append(
            {
                "fault": interval.fault,
                "target": interval.target,
                "start_s": round((interval.start - t0) / 1e9, 3),
                "stop_s": None if interval.stop is None else round((interval.stop - t0) / 1e9, 3),
                "details": {k: v for k, v in value.items() if k not in ("fault", "target")},
            }
        )
    return out


def trim_check(result: Mapping) -> dict:
    """A checker result without the bulky parts (linearized prefixes, the sub-history,
    which is written to its own file)."""
    out: dict = {}
    for key, value in result.items():
        if key == "minimal_failing_subhistory":
            out["minimal_failing_subhistory_events"] = len(value or [])
            continue
        if key == "per_key" and isinstance(value, Mapping):
            out[key] = {
                k: {kk: vv for kk, vv in v.items() if kk != "linearized_prefix"}
                for k, v in value.items()
            }
            continue
        if key == "violations" and isinstance(value, list) and len(value) > 50:
            out[key] = value[:50]
            out["violations_total"] = len(value)
            continue
        out[key] = value
    return out


def _verdict(valid: Any) -> str:
    return "valid" if valid is True else "INVALID" if valid is False else str(valid)


def summary_text(results: Mapping) -> str:
    """The table printed at the end of ``python -m jepsen_lite run``."""
    lines = []
    cfg = results.get("config", {})
    lines.append(
        f"jepsen-lite run: workload {cfg.get('workload')}, nemesis "
        f"{','.join(cfg.get('nemesis') or []) or 'none'}, seed {cfg.get('seed')}, "
        f"{cfg.get('time_limit')} s, rate {cfg.get('rate')}/s, concurrency "
        f"{cfg.get('concurrency')}"
    )
    lines.append("")
    rows = []
    for name, check in (results.get("checks") or {}).items():
        note = check.get("note", "")
        if check.get("valid") is False:
            if check.get("failing_key") is not None:
                note = f"failing key {check['failing_key']}"
            elif check.get("violations"):
                kinds = sorted({v.get("kind") for v in check["violations"]})
                note = "violations: " + ", ".join(str(k) for k in kinds)
        rows.append([name, _verdict(check.get("valid")), note])
    if rows:
        lines.append(format_table(["checker", "result", "note"], rows))
        lines.append("")
    ops = results.get("ops") or {}
    if ops:
        rows = [
            [f, r.get("ok", 0), r.get("fail", 0), r.get("info", 0), r.get("pending", 0)]
            for f, r in ops.get("by_f", {}).items()
        ]
        t = ops.get("by_type", {})
        rows.append(["total", t.get("ok", 0), t.get("fail", 0), t.get("info", 0), t.get("pending", 0)])
        lines.append(format_table(["f", "ok", "fail", "info", "pending"], rows))
        lines.append("")
    intervals = results.get("nemesis_intervals") or []
    if intervals:
        rows = []
        for iv in intervals:
            stop = "-" if iv.get("stop_s") is None else f"{iv['stop_s']:.1f}"
            errors = "; ".join(iv.get("errors") or [])
            rows.append([iv["fault"], iv.get("target") or "", f"{iv['start_s']:.1f}", stop, errors[:60]])
        lines.append(format_table(["nemesis", "target", "start s", "stop s", "errors"], rows))
        lines.append("")
    churn = results.get("churn")
    if churn:
        lines.append(
            f"churn: {churn['steps']} topology commands, {churn['ok']} accepted, "
            f"{churn['errors']} errors" + (" (the stores do not implement AdminRequest)"
                                          if churn.get("unsupported") else "")
        )
        counts = churn.get("membership") or {}
        if any(counts.values()):
            lines.append(
                f"churn membership: {counts.get('remove_peer', 0)} peers removed, "
                f"{counts.get('add_peer', 0)} added ({counts.get('readds', 0)} re-added on the "
                f"store they were removed from, {counts.get('fault_readds', 0)} of them around "
                f"a paused or killed store), {counts.get('moves', 0)} moves")
    lines += topology_lines((results.get("checks") or {}).get("topology-recovery"))
    lines += convergence_lines((results.get("checks") or {}).get("convergence"))
    lines += hostile_lines((results.get("checks") or {}).get("hostile"))
    lines += watch_lines((results.get("checks") or {}).get("watch"))
    lines += kvlease_lines((results.get("checks") or {}).get("kvlease"))
    heal = results.get("heal") or {}
    if isinstance(heal, dict) and heal.get("error"):
        lines.append(f"heal: {heal['error']}")
    restored = (heal.get("replication") or {}) if isinstance(heal, dict) else {}
    if restored.get("actions"):
        lines.append(f"heal: {len(restored['actions'])} peer changes to restore the "
                     f"replication factor")
    if results.get("error"):
        lines.append(f"error: {results['error']}")
    lines.append(
        f"result: {_verdict(results.get('valid'))} (exit {results.get('exit_code')}); "
        f"run directory {results.get('dir')}"
        + (f"; index page {Path(str(results.get('dir'))) / 'index.html'}"
           if "index.html" in (results.get("files") or {}) else "")
    )
    if results.get("valid") is not True and results.get("reproduce"):
        lines.append(f"reproduce: {results['reproduce']}")
    return "\n".join(lines)


def hostile_lines(check: Mapping | None, limit: int = 10) -> list[str]:
    """The ``hostile`` check in the summary: attempts made and refused by kind, and every
    effect (window, target, the attempt that asked for it, what changed)."""
    if not check:
        return []
    kinds = ", ".join(f"{k} {v.get('refused', 0)}/{v.get('made', 0)}"
                      for k, v in (check.get("by_kind") or {}).items())
    lines = [f"hostile: {check.get('checked', 0)} of {check.get('windows', 0)} windows checked, "
             f"{check.get('attempts', 0)} attempts (refused/made: {kinds}), "
             f"{len(check.get('effects') or [])} effects"]
    for e in (check.get("effects") or [])[:limit]:
        lines.append(f"  EFFECT window {e.get('window')} on {e.get('target')}: attempt "
                     f"{e.get('attempt')}: {e.get('effect')}")
    for u in (check.get("unchecked") or [])[:limit]:
        lines.append(f"  unchecked: window {u.get('window')} on {u.get('target')}: {u.get('what')}")
    for s in (check.get("skipped") or [])[:limit]:
        lines.append(f"  skipped: window {s.get('window')} on {s.get('target')}: {s.get('why')}")
    return lines


def convergence_lines(check: Mapping | None, limit: int = 10) -> list[str]:
    """The replica convergence check for the summary: one line when every region agreed;
    else every diverged region with each replica's applied index, key count and digest, and
    the regions never settled or not compared."""
    if not check:
        return []
    if check.get("valid") is True:
        return [f"convergence: {check.get('note', '')}"]
    lines = [f"convergence: {_verdict(check.get('valid'))}: {check.get('note', '')}"]
    for d in (check.get("diverged") or [])[:limit]:
        lines.append(f"  region {d.get('region')} DIVERGED at applied index "
                     f"{d.get('applied_index')} (voters {', '.join(d.get('voters') or [])}):")
        for store, r in (d.get("replicas") or {}).items():
            lines.append(f"    {store}: applied {r.get('applied_index')}, {r.get('key_count')} "
                         f"keys, digest {r.get('digest')}, epoch {r.get('epoch')}")
    for rid, reason in list((check.get("unsettled") or {}).items())[:limit]:
        lines.append(f"  region {rid} unsettled: {reason}")
    for rid, reason in list((check.get("unchecked") or {}).items())[:limit]:
        lines.append(f"  region {rid} not compared: {reason}")
    return lines


def _store_view(view: Any) -> str:
    if view is None:
        return "no peer"
    if isinstance(view, dict):
        init = "initialized" if view.get("initialized") else "uninitialized"
        return f"peer {view.get('peer_id')} {init} at epoch {view.get('epoch')}"
    return str(view)


def topology_lines(check: Mapping | None, limit: int = 10) -> list[str]:
    """The topology recovery check for the summary: one line when it recovered; else every
    region that differs (catalog vs each store's view) and every extra peer."""
    if not check:
        return []
    if check.get("valid") is True:
        return [f"topology recovery: {check.get('note', '')}"]
    lines = [f"topology recovery: {_verdict(check.get('valid'))}: {check.get('note', '')}"]
    regions = check.get("regions") or {}
    for rid, entry in list(regions.items())[:limit]:
        cat = entry.get("catalog") or {}
        lines.append(f"  region {rid}: catalog voters {cat.get('voters')} learners "
                     f"{cat.get('learners')} peers {cat.get('peers')} epoch {cat.get('epoch')} "
                     f"leader {cat.get('leader')}")
        for store, view in (entry.get("stores") or {}).items():
            lines.append(f"    {store}: {_store_view(view)}")
        for problem in entry.get("problems") or []:
            lines.append(f"    differs: {problem}")
    if len(regions) > limit:
        lines.append(f"  ... {len(regions) - limit} more regions in results.json")
    for e in (check.get("extra") or [])[:limit]:
        lines.append(f"  extra: {e.get('store')} hosts peer {e.get('peer_id')} of region "
                     f"{e.get('region')} at epoch {e.get('epoch')} (catalog: {e.get('catalog')})")
    if check.get("restore_error"):
        lines.append(f"  restore: {check['restore_error']}")
    return lines


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def write_subhistory(path: Path, events: Sequence[dict]) -> None:
    History(list(events)).save(path)


# -- SVG plot ---------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def _nice_step(span: float, target_ticks: int = 8) -> float:
    raw = max(span, 1e-9) / target_ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def render_svg(
    history: History,
    *,
    title: str = "",
    bucket_s: float = 1.0,
    max_points: int = 20000,
) -> str:
    """Latency (log scale, one dot per completed operation, colour = ok/fail/info) and
    throughput (completions per second by type) over time, with every nemesis window
    shaded across both panels and drawn as a bar in its own lane below."""
    events = history.events
    t0 = events[0]["time"] if events else 0
    ops = [op for op in history.operations() if op.completion is not None]
    intervals = nemesis_summary(history, t0)
    t_end = max([(e["time"] - t0) / 1e9 for e in events] or [1.0])
    t_end = max(t_end, 1e-3)

    width, left, right = 1100, 70, 170
    top = 44
    lat_h, thr_h, gap = 260, 170, 40
    faults = sorted({iv["fault"] for iv in intervals})
    lane_h = 16
    lanes_top = top + lat_h + gap + thr_h + 36
    height = lanes_top + lane_h * max(len(faults), 1) + 40
    plot_w = width - left - right

    def x(t: float) -> float:
        return left + plot_w * min(max(t, 0.0), t_end) / t_end

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]

    # nemesis shading (under everything) and lanes
    panel_bottom = top + lat_h + gap + thr_h
    for iv in intervals:
        color = FAULT_COLORS.get(iv["fault"], "#999999")
        x1 = x(iv["start_s"])
        x2 = x(iv["stop_s"] if iv["stop_s"] is not None else t_end)
        w = max(x2 - x1, 1.0)
        label = escape(f"{iv['fault']} {iv.get('target') or ''}".strip())
        for y0, h in ((top, lat_h), (top + lat_h + gap, thr_h)):
            out.append(
                f'<rect class="nemesis" x="{_fmt(x1)}" y="{y0}" width="{_fmt(w)}" height="{h}" '
                f'fill="{color}" fill-opacity="0.12"><title>{label}</title></rect>'
            )
        lane = faults.index(iv["fault"])
        ly = lanes_top + lane * lane_h
        out.append(
            f'<rect class="lane" x="{_fmt(x1)}" y="{ly + 2}" width="{_fmt(w)}" '
            f'height="{lane_h - 4}" fill="{color}" fill-opacity="0.7"><title>{label}</title></rect>'
        )
        target = str(iv.get("target") or "")
        if target and w > 6.5 * len(target):
            out.append(
                f'<text x="{_fmt(x1 + 3)}" y="{ly + lane_h - 5}" font-size="9" fill="white">'
                f"{escape(target)}</text>"
            )
    for i, fault in enumerate(faults):
        ly = lanes_top + i * lane_h
        out.append(
            f'<text x="{left - 6}" y="{ly + lane_h - 4}" text-anchor="end">{escape(fault)}</text>'
        )
    if faults:
        out.append(f'<text x="{left}" y="{lanes_top - 8}" font-weight="bold">nemesis</text>')

    # time axis (shared)
    step = _nice_step(t_end)
    tick = 0.0
    while tick <= t_end + 1e-9:
        tx = x(tick)
        out.append(
            f'<line x1="{_fmt(tx)}" y1="{top}" x2="{_fmt(tx)}" y2="{panel_bottom}" '
            f'stroke="#e0e0e0" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{_fmt(tx)}" y="{panel_bottom + 14}" text-anchor="middle">{tick:g}</text>'
        )
        tick += step
    out.append(
        f'<text x="{left + plot_w / 2}" y="{panel_bottom + 28}" text-anchor="middle">'
        f"time since start (s)</text>"
    )

    # latency panel
    lats = [
        ((op.call - t0) / 1e9, max((op.completion["time"] - op.call) / 1e6, 1e-3), op.status)
        for op in ops
    ]
    if len(lats) > max_points:
        stride = math.ceil(len(lats) / max_points)
        lats = lats[::stride]
    lo_exp = math.floor(math.log10(min((ms for _, ms, _ in lats), default=1.0)))
    hi_exp = math.ceil(math.log10(max((ms for _, ms, _ in lats), default=1000.0)))
    if hi_exp <= lo_exp:
        hi_exp = lo_exp + 1

    def y_lat(ms: float) -> float:
        frac = (math.log10(ms) - lo_exp) / (hi_exp - lo_exp)
        return top + lat_h - frac * lat_h

    out.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{lat_h}" fill="none" stroke="#444"/>'
    )
    for e in range(lo_exp, hi_exp + 1):
        yy = y_lat(10.0**e)
        out.append(
            f'<line x1="{left}" y1="{_fmt(yy)}" x2="{left + plot_w}" y2="{_fmt(yy)}" '
            f'stroke="#e0e0e0"/>'
        )
        out.append(f'<text x="{left - 6}" y="{_fmt(yy + 4)}" text-anchor="end">{10.0**e:g}</text>')
    out.append(
        f'<text transform="translate(16,{top + lat_h / 2}) rotate(-90)" text-anchor="middle">'
        f"latency (ms, log)</text>"
    )
    for status in ("ok", "fail", "info"):
        color = COMPLETION_COLORS[status]
        pts = [
            f'<circle cx="{_fmt(x(t))}" cy="{_fmt(y_lat(ms))}" r="1.6"/>'
            for t, ms, s in lats
            if s == status
        ]
        if pts:
            out.append(f'<g class="latency-{status}" fill="{color}" fill-opacity="0.6">')
            out.extend(pts)
            out.append("</g>")

    # throughput panel
    ty0 = top + lat_h + gap
    n_buckets = max(1, math.ceil(t_end / bucket_s))
    counts = {s: [0] * n_buckets for s in ("ok", "fail", "info")}
    for op in ops:
        t = (op.completion["time"] - t0) / 1e9
        b = min(int(t / bucket_s), n_buckets - 1)
        if op.status in counts:
            counts[op.status][b] += 1
    peak = max([c / bucket_s for s in counts for c in counts[s]] or [1.0]) or 1.0
    ystep = _nice_step(peak, 4)
    ymax = math.ceil(peak / ystep) * ystep

    def y_thr(v: float) -> float:
        return ty0 + thr_h - thr_h * v / ymax

    out.append(
        f'<rect x="{left}" y="{ty0}" width="{plot_w}" height="{thr_h}" fill="none" stroke="#444"/>'
    )
    v = 0.0
    while v <= ymax + 1e-9:
        yy = y_thr(v)
        out.append(f'<line x1="{left}" y1="{_fmt(yy)}" x2="{left + plot_w}" y2="{_fmt(yy)}" stroke="#e0e0e0"/>')
        out.append(f'<text x="{left - 6}" y="{_fmt(yy + 4)}" text-anchor="end">{v:g}</text>')
        v += ystep
    out.append(
        f'<text transform="translate(16,{ty0 + thr_h / 2}) rotate(-90)" text-anchor="middle">'
        f"ops/s</text>"
    )
    for status in ("ok", "fail", "info"):
        series = counts[status]
        if not any(series):
            continue
        pts = " ".join(
            f"{_fmt(x((i + 0.5) * bucket_s))},{_fmt(y_thr(c / bucket_s))}" for i, c in enumerate(series)
        )
        out.append(
            f'<polyline class="throughput-{status}" points="{pts}" fill="none" '
            f'stroke="{COMPLETION_COLORS[status]}" stroke-width="1.5"/>'
        )

    # legend
    lx, ly = left + plot_w + 16, top + 6
    out.append(f'<text x="{lx}" y="{ly}" font-weight="bold">operations</text>')
    for i, status in enumerate(("ok", "fail", "info")):
        yy = ly + 16 * (i + 1)
        out.append(f'<circle cx="{lx + 5}" cy="{yy - 4}" r="4" fill="{COMPLETION_COLORS[status]}"/>')
        out.append(f'<text x="{lx + 14}" y="{yy}">{status}</text>')
    ly += 16 * 5
    if faults:
        out.append(f'<text x="{lx}" y="{ly}" font-weight="bold">faults</text>')
        for i, fault in enumerate(faults):
            yy = ly + 16 * (i + 1)
            color = FAULT_COLORS.get(fault, "#999999")
            out.append(
                f'<rect x="{lx}" y="{yy - 9}" width="10" height="10" fill="{color}" fill-opacity="0.7"/>'
            )
            out.append(f'<text x="{lx + 14}" y="{yy}">{escape(fault)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def client_events(history: History) -> list[dict]:
    return [e for e in history.events if not is_nemesis(e)]


__all__ = [
    "combine_valid",
    "exit_code",
    "nemesis_summary",
    "op_counts",
    "render_svg",
    "summary_text",
    "topology_lines",
    "trim_check",
    "write_json",
    "write_subhistory",
]
