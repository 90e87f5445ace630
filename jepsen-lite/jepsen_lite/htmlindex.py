"""The run's index page: ``RUN/index.html``, one static HTML file that summarizes a run.

Owns: rendering the page (:func:`render_index`: the verdict, the configuration, op counts,
every checker's verdict, every nemesis window, the plot, the failing sub-history when there
is one, links to the run's files and cluster logs), the last write of a run's report
(:func:`write_results`: ``results.json``, then ``index.html``) and the ``index`` subcommand
that regenerates the page of an existing run directory. The page is a single file (inline
CSS, the plot embedded as a data URI and linked, no JavaScript, nothing fetched).

Never runs a cluster, never checks a history, never changes a verdict, and never puts a value
into the page unescaped: values come from remote processes.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .commands import EXIT_UNKNOWN, EXIT_VALID, SUBCOMMANDS, register_subcommand
from .history import History
from .report import FAULT_COLORS, nemesis_summary, summary_text, write_json

INDEX = "index.html"
MAX_INLINE_PLOT = 8 * 1024 * 1024
"""A larger plot.svg is linked (``<img src="plot.svg">``) instead of embedded."""
MAX_DETAILS = 6000
"""Characters of a checker's JSON shown under its row (results.json has it all)."""

CSS = """
body{font:14px/1.4 system-ui,sans-serif;color:#222;max-width:1100px;margin:16px auto;padding:0 12px}
h1{font-size:18px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:4px 0}td,th{border:1px solid #ddd;padding:2px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.n{text-align:right}
code,pre{font:12px ui-monospace,monospace}pre{white-space:pre-wrap;margin:2px 0}
.verdict{font-size:40px;font-weight:bold;letter-spacing:1px}
.valid{color:#2ca02c}.invalid{color:#d62728}.unknown{color:#e67e00}
.box{border-left:8px solid;padding:6px 12px;margin:8px 0;background:#fafafa}
.b-valid{border-color:#2ca02c}.b-invalid{border-color:#d62728}.b-unknown{border-color:#e67e00}
.sw{display:inline-block;width:10px;height:10px;margin-right:5px}
tr.fail td{background:#fdecea}tr.info td{background:#fff4e0}tr.ok td{background:#eef8ee}
img.plot{max-width:100%;height:auto;border:1px solid #ddd}
ul.inline{padding:0;list-style:none}ul.inline li{display:inline-block;margin-right:16px}
.muted{color:#777}.cols{display:flex;flex-wrap:wrap;gap:0 40px}
"""


class Html(str):
    """Markup already escaped: :func:`cell` passes it through."""


def text(value: Any) -> str:
    """A value as display text: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, separators=(", ", ": "))


def cell(value: Any) -> str:
    return value if isinstance(value, Html) else escape(text(value))


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], *, numeric: Iterable[int] = (),
          row_class: Callable[[int], str] | None = None) -> str:
    """An HTML table; every cell escaped unless it is :class:`Html`."""
    numeric = set(numeric)
    out = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>"]
    for i, row in enumerate(rows):
        cls = row_class(i) if row_class else ""
        attr = f' class="{escape(cls)}"' if cls else ""
        tds = "".join(f'<td class="n">{cell(v)}</td>' if j in numeric else f"<td>{cell(v)}</td>"
                      for j, v in enumerate(row))
        out.append(f"<tr{attr}>{tds}</tr>")
    out.append("</table>")
    return "\n".join(out)


def verdict_class(valid: Any) -> str:
    return "valid" if valid is True else "invalid" if valid is False else "unknown"


def verdict(valid: Any) -> Html:
    cls = verdict_class(valid)
    label = "valid" if valid is True else "INVALID" if valid is False else text(valid)
    return Html(f'<span class="{cls}"><b>{escape(label)}</b></span>')


def check_note(check: Mapping) -> str:
    """The note of a checker's row (as in the printed summary)."""
    note = text(check.get("note", ""))
    if check.get("valid") is False:
        if check.get("failing_key") is not None:
            note = f"failing key {text(check['failing_key'])}; {note}".rstrip("; ")
        elif check.get("violations"):
            kinds = sorted({text(v.get("kind")) for v in check["violations"]
                            if isinstance(v, Mapping)})
            note = f"violations: {', '.join(kinds)}; {note}".rstrip("; ")
    return note


def details(value: Any, label: str = "json") -> Html:
    body = json.dumps(value, indent=1, default=str)
    if len(body) > MAX_DETAILS:
        body = body[:MAX_DETAILS] + "\n... (the rest is in results.json)"
    return Html(f"<details><summary>{escape(label)}</summary><pre>{escape(body)}</pre></details>")


def _secs(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else text(value)


def link(href: str, label: str | None = None) -> Html:
    return Html(f'<a href="{escape(quote(href))}">{escape(label if label is not None else href)}</a>')


# -- sections ---------------------------------------------------------------------------------


def _head(results: Mapping) -> str:
    cfg = results.get("config") or {}
    valid = results.get("valid")
    cls = verdict_class(valid)
    run_s = (results.get("timing") or {}).get("run_s")
    word = cls.upper() if valid in (True, False, None, "unknown") else f"UNKNOWN ({text(valid)})"
    title = (f"jepsen-lite {text(cfg.get('workload', '?'))} / "
             f"{', '.join(text(n) for n in cfg.get('nemesis') or []) or 'no nemesis'} / "
             f"seed {text(cfg.get('seed', results.get('seed')))}")
    out = [f'<div class="box b-{cls}"><div class="verdict {cls}">{escape(word)}</div>',
           f"<h1>{escape(title)}</h1>",
           f'<div class="muted">exit {escape(text(results.get("exit_code", "?")))}; '
           + (f"{escape(_secs(run_s))} s; " if run_s is not None else "")
           + f"run directory <code>{escape(text(results.get('dir', '')))}</code></div>"]
    if results.get("error"):
        out.append(f"<p><b>error:</b> <code>{escape(text(results['error']))}</code></p>")
    if results.get("reproduce") and valid is not True:
        out.append(f"<p>reproduce: <code>{escape(text(results['reproduce']))}</code></p>")
    out.append("</div>")
    return f"<title>{escape(title)}: {escape(word)}</title>\n</head><body>\n" + "\n".join(out)


def _config(results: Mapping) -> str:
    cfg = results.get("config") or {}
    rows = [["workload", cfg.get("workload")],
            ["nemeses", ", ".join(text(n) for n in cfg.get("nemesis") or []) or "none"],
            ["seed", cfg.get("seed", results.get("seed"))],
            ["duration", f"{text(cfg.get('time_limit'))} s"],
            ["concurrency", cfg.get("concurrency")],
            ["rate", f"{text(cfg.get('rate'))} ops/s"]]
    rows += [[k, cfg[k]] for k in ("keys", "stores", "replication", "workload_options", "env")
             if cfg.get(k) not in (None, {}, [])]
    return "<section><h2>Configuration</h2>\n" + table(["setting", "value"], rows) + "</section>"


def _ops(ops: Mapping | None) -> str:
    if not ops:
        return '<section><h2>Operations</h2>\n<p class="muted">no operations recorded</p></section>'
    cols = ("ok", "fail", "info", "pending")
    rows = [[f, *(r.get(c, 0) for c in cols)] for f, r in (ops.get("by_f") or {}).items()]
    t = ops.get("by_type") or {}
    rows.append([Html("<b>total</b>"), *(t.get(c, 0) for c in cols)])
    out = [f"<section><h2>Operations</h2>\n<p>{escape(text(ops.get('total', 0)))} operations, "
           f"{escape(text(ops.get('final_reads', 0)))} final reads</p>",
           table(["f", *cols], rows, numeric=range(1, 5))]
    errors = list((ops.get("errors") or {}).items())
    if errors:
        out.append(table(["error (fail/info)", "count"], errors[:30], numeric=[1]))
    return "\n".join(out) + "</section>"


def _checks(checks: Mapping) -> str:
    rows = [[name, verdict(c.get("valid")), check_note(c), details(c)]
            for name, c in checks.items() if isinstance(c, Mapping)]
    body = table(["checker", "result", "note", "details"], rows) if rows else (
        '<p class="muted">no checker ran</p>')
    return "<h2>Checkers</h2>\n" + body


def _nemesis(results: Mapping, run_dir: Path) -> str:
    intervals = results.get("nemesis_intervals")
    if intervals is None and (run_dir / "history.jsonl").is_file():
        intervals = nemesis_summary(History.load(run_dir / "history.jsonl"))
    rows = []
    for iv in intervals or []:
        fault = text(iv.get("fault"))
        color = FAULT_COLORS.get(fault, "#999999")
        stop = iv.get("stop_s")
        rows.append([Html(f'<span class="sw" style="background:{color}"></span>{escape(fault)}'),
                     iv.get("target") or "", _secs(iv.get("start_s")),
                     "open" if stop is None else _secs(stop),
                     "; ".join(f"{k}={text(v)}" for k, v in (iv.get("details") or {}).items()),
                     "; ".join(text(e) for e in iv.get("errors") or [])])
    body = table(["fault", "target", "start s", "end s", "details", "errors"], rows,
                 numeric=[2, 3]) if rows else '<p class="muted">no nemesis windows</p>'
    return "<h2>Nemesis</h2>\n" + body


def _plot(run_dir: Path) -> str:
    path = run_dir / "plot.svg"
    if not path.is_file():
        return "<h2>Plot</h2>\n<p class=\"muted\">no plot.svg</p>"
    src = "plot.svg"
    if path.stat().st_size <= MAX_INLINE_PLOT:
        src = "data:image/svg+xml;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<h2>Plot</h2>\n<p>{link('plot.svg')}: latency (log scale) and throughput over "
            f"time, nemesis windows shaded</p>\n"
            f'<a href="plot.svg"><img class="plot" alt="latency and throughput over time" '
            f'src="{escape(src)}"></a>')


def _subhistory(results: Mapping) -> str:
    events = results.get("failing_subhistory_events")
    if not events:
        return ""
    lin = (results.get("checks") or {}).get("linearizable") or {}
    t0 = next((e["time"] for e in events if isinstance(e.get("time"), int | float)), 0)
    rows, classes = [], []
    for e in events:
        other = {k: v for k, v in e.items()
                 if k not in ("index", "time", "process", "type", "f", "key", "value")}
        t = e.get("time")
        rows.append([e.get("index", ""), f"{(t - t0) / 1e6:.1f}" if isinstance(t, int | float)
                     else "", e.get("process", ""), e.get("type", ""), e.get("f", ""),
                     e.get("key", ""), e.get("value"), other or ""])
        classes.append(text(e.get("type", "")))
    key = lin.get("failing_key")
    return (f"<h2>Failing sub-history ({len(events)} events"
            f"{', key ' + escape(text(key)) if key is not None else ''})</h2>\n"
            f"<p>The linearizability checker's minimal failing sub-history "
            f"({link(text(results.get('failing_subhistory') or 'failing-subhistory.jsonl'))}); "
            f"times in ms after its first event.</p>\n"
            + table(["index", "t ms", "process", "type", "f", "key", "value", "other"], rows,
                    numeric=[0, 1], row_class=lambda i: classes[i]))


def _files(results: Mapping, run_dir: Path) -> str:
    files = results.get("files") or {}
    items = [f"<li>{link(text(v) + ('/' if text(v) == 'cluster' else ''), text(k))}</li>"
             for k, v in files.items()]
    logs = sorted((run_dir / "cluster" / "logs").glob("*.log"))
    out = ["<h2>Files</h2>", '<ul class="inline">', *items, "</ul>"]
    if logs:
        out.append('<p>Cluster logs:</p>\n<ul class="inline">')
        out += [f"<li>{link(f'cluster/logs/{p.name}', p.name)} "
                f'<span class="muted">({p.stat().st_size:,} bytes)</span></li>' for p in logs]
        out.append("</ul>")
    out.append(f"<details><summary>text summary</summary><pre>{escape(summary_text(results))}"
               f"</pre></details>")
    return "\n".join(out)


def render_index(results: Mapping, run_dir: Path) -> str:
    """The page of a run directory from its results (as in ``results.json``)."""
    run_dir = Path(run_dir)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<style>{CSS}</style>", _head(results),
        '<div class="cols">', _config(results), _ops(results.get("ops")), "</div>",
        _checks(results.get("checks") or {}), _nemesis(results, run_dir),
        _plot(run_dir), _subhistory(results), _files(results, run_dir),
        "</body></html>", ""])


def _write_page(run_dir: Path, page: str) -> Path:
    path = run_dir / INDEX
    tmp = run_dir / (INDEX + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def write_index(run_dir: Path, results: Mapping) -> Path:
    """Write ``RUN/index.html`` (atomically) and return its path."""
    return _write_page(Path(run_dir), render_index(results, Path(run_dir)))


def write_results(run_dir: Path, results: dict, log: Callable[[str], None] | None = None) -> dict:
    """The end of a run's report: list ``index.html`` in ``results["files"]``, write
    ``results.json``, then ``index.html``, and log the summary's closing line (which names the
    page). A page that cannot be rendered is left out and noted as ``results["index_error"]``:
    the page never costs a run its results.json."""
    run_dir = Path(run_dir)
    results.setdefault("files", {})[INDEX] = INDEX
    try:
        page = render_index(results, run_dir)
    except Exception as exc:  # noqa: BLE001 - the results matter more than their page
        del results["files"][INDEX]
        results["index_error"] = f"{type(exc).__name__}: {exc}"
        page = None
    write_json(run_dir / "results.json", results)
    log = log or (lambda msg: None)
    if page is not None:
        try:
            _write_page(run_dir, page)
        except OSError as exc:
            log(f"index.html not written: {exc}")
    log(summary_text(results).splitlines()[-1])
    return results


# -- python -m jepsen_lite index RUN_DIR --------------------------------------------------


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's directory")


def _run(args: argparse.Namespace) -> int:
    path = Path(args.run_dir) / "results.json"
    results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if not isinstance(results, dict):
        print(f"error: {args.run_dir} holds no results.json of a finished jepsen-lite run",
              file=sys.stderr)
        return EXIT_UNKNOWN
    print(write_index(path.parent, results))
    return EXIT_VALID


def register() -> None:
    register_subcommand("index", "write RUN_DIR/index.html again from its results.json",
                        _configure, _run)


if "index" not in SUBCOMMANDS:
    register()


__all__ = ["INDEX", "render_index", "register", "write_index", "write_results"]
