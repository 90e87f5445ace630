"""`nokv top`: the live figures of every process of a local cluster, in the terminal.

Owns: sampling the metrics endpoint of every serving
(non-retired) process of a `--dir` cluster at once, every interval, each with a short
timeout (a process that does not answer is a `down` row, never an error of the command);
turning two samples of a process into its row (`process_row`, `frame_rows`: pure, parsed
families and elapsed seconds in, a dict of numbers out); and printing the frames: redrawn in
place when stdout is a terminal, one after another (a blank line between) when it is not, one
JSON object per line with `--json`. Rates need two samples, so the first frame comes one
interval after the first sample. Never changes a process, never reads anything but the
metrics endpoints and cluster.json, and never opens a connection itself
(`nokvpy.rpc.metrics_http.fetch_metrics` does).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nokvpy.cli.common import CliError

if TYPE_CHECKING:
    from nokvpy.metrics import Family

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen
MB = 1_000_000

Families = Mapping[str, "Family"]  # parsed families by name (`by_name`)

# (header, row key, decimals): the table of a frame, in this order; every column but the
# first three is a number, right-aligned, "-" when unknown
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("NAME", "name", -1), ("KIND", "kind", -1), ("ROLE", "role", -1),
    ("CPU%", "cpu_percent", 1), ("RPC/s", "rpc_per_s", 1), ("ERR/s", "rpc_errors_per_s", 1),
    ("SYNC/s", "fsyncs_per_s", 1), ("SYNC_MS", "fsync_ms", 2),
    ("WAL_MB/s", "wal_mb_per_s", 2), ("APPLY/s", "applied_per_s", 1),
    ("MAXRSS", "max_rss_mb", 0),
)


# ---- rows: pure -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """One process's answer: when it came (monotonic seconds), its families by name (None
    when it did not answer) and why not."""

    at: float
    families: Families | None
    error: str = ""


def by_name(families: Iterable[Family]) -> dict[str, Family]:
    return {f.name: f for f in families}


def _samples(fams: Families, name: str, **match: str) -> list[tuple[tuple, float]]:
    fam = fams.get(name)
    if fam is None:
        return []
    return [(s.labels, float(s.value)) for s in fam.samples
            if s.name == name and all(s.label(k) == v for k, v in match.items())]


def _total(fams: Families | None, name: str) -> float | None:
    """The sum of a family's samples; None when the process does not serve it."""
    if fams is None or name not in fams:
        return None
    return sum(v for _, v in _samples(fams, name))


def _delta(before: Families | None, after: Families | None, name: str) -> float | None:
    """How much a counter grew; None when a sample lacks it or it went down (a reset)."""
    a, b = _total(before, name), _total(after, name)
    if a is None or b is None or b < a:
        return None
    return b - a


def _per_s(delta: float | None, elapsed: float | None, scale: float = 1.0) -> float | None:
    if delta is None or not elapsed or elapsed <= 0:
        return None
    return delta / elapsed * scale


def _applied_delta(before: Families | None, after: Families | None) -> float | None:
    """Entries applied between the samples, summed over the replicas in both (a replica
    whose applied index went down was recreated: it counts 0)."""
    if before is None or after is None:
        return None
    if "nokv_raft_applied_index" not in after or "nokv_raft_applied_index" not in before:
        return None
    was = dict(_samples(before, "nokv_raft_applied_index"))
    return sum(max(0.0, v - was[lbl]) for lbl, v in _samples(after, "nokv_raft_applied_index")
               if lbl in was)


def _restarted(before: Families, after: Families) -> bool:
    a = _total(before, "nokv_process_start_time_seconds")
    b = _total(after, "nokv_process_start_time_seconds")
    return a is not None and b is not None and a != b


def role(kind: str, fams: Families) -> tuple[str, dict[str, Any]]:
    """What the process is doing, as a short text and as numbers (by kind)."""
    if kind == "store":
        regions = _total(fams, "nokv_store_regions")
        leaders = _total(fams, "nokv_store_leaders")
        in_flight = _total(fams, "nokv_region_in_flight_proposals")
        nums = {"regions": _int(regions), "leaders": _int(leaders), "in_flight": _int(in_flight)}
        return f"regions {_text(regions)} leaders {_text(leaders)}", nums
    if kind == "metaroot":
        leader, term = _total(fams, "nokv_raft_leader"), _total(fams, "nokv_raft_term")
        nums = {"leader": None if leader is None else leader == 1, "term": _int(term)}
        word = "?" if leader is None else "leader" if leader == 1 else "follower"
        return f"{word} term {_text(term)}", nums
    if kind == "coordinator":
        grants = _samples(fams, "nokv_coordinator_grant_held")
        held = sorted(dict(lbl).get("duty", "") for lbl, v in grants if v == 1)
        states = [dict(lbl).get("state", "") for lbl, v in
                  _samples(fams, "nokv_coordinator_catch_up_state") if v == 1]
        lag = _total(fams, "nokv_coordinator_root_lag")
        state = states[0] if states else "?"
        nums = {"grants_held": held, "grants": len(grants), "catch_up": state,
                "root_lag": _int(lag)}
        return f"grants {len(held)}/{len(grants)} {state} lag {_text(lag)}", nums
    return "", {}


def process_row(name: str, kind: str, before: Families | None, after: Families | None,
                elapsed: float | None, error: str = "") -> dict[str, Any]:
    """One process's row from two samples `elapsed` seconds apart (`before` None: only the
    current one; `after` None: it did not answer, `error` says why). Rates are None when they
    cannot be known: no earlier sample, the process restarted, a counter went down."""
    row: dict[str, Any] = {"name": name, "kind": kind, "up": after is not None,
                           "error": error or None}
    rates = ("cpu_percent", "rpc_per_s", "rpc_errors_per_s", "fsyncs_per_s", "fsync_ms",
             "wal_mb_per_s", "applied_per_s")
    if after is None:
        row.update({"role": f"down: {error or 'no answer'}", **dict.fromkeys(rates),
                    "max_rss_mb": None})
        return row
    if before is not None and _restarted(before, after):
        before = None
    text, nums = role(kind, after)
    fsyncs = _delta(before, after, "nokv_storage_fsyncs_total")
    sync_s = _delta(before, after, "nokv_storage_sync_seconds_total")
    rss = _total(after, "nokv_process_max_resident_memory_bytes")
    row.update({
        "role": text,
        "cpu_percent": _per_s(_delta(before, after, "nokv_process_cpu_seconds_total"),
                              elapsed, 100.0),
        "rpc_per_s": _per_s(_delta(before, after, "nokv_rpc_requests_total"), elapsed),
        "rpc_errors_per_s": _per_s(_delta(before, after, "nokv_rpc_errors_total"), elapsed),
        "fsyncs_per_s": _per_s(fsyncs, elapsed),
        "fsync_ms": sync_s / fsyncs * 1000.0 if fsyncs and sync_s is not None else None,
        "wal_mb_per_s": _per_s(_delta(before, after, "nokv_wal_bytes_total"), elapsed, 1 / MB),
        "applied_per_s": _per_s(_applied_delta(before, after), elapsed),
        "max_rss_mb": None if rss is None else rss / MB,
    })
    row.update(nums)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


def frame_rows(processes: Sequence[tuple[str, str]], previous: Mapping[str, Scrape],
               current: Mapping[str, Scrape]) -> list[dict[str, Any]]:
    """The rows of a frame: one per (name, kind) of `processes`, in that order; a process
    with no current scrape is down ("no answer")."""
    rows = []
    for name, kind in processes:
        now = current.get(name)
        if now is None or now.families is None:
            rows.append(process_row(name, kind, None, None, None,
                                    now.error if now is not None else "no answer"))
            continue
        was = previous.get(name)
        if was is None or was.families is None:
            rows.append(process_row(name, kind, None, now.families, None))
        else:
            rows.append(process_row(name, kind, was.families, now.families, now.at - was.at))
    return rows


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as an aligned table: text columns left, numbers right, "-" when unknown."""
    cells = [[_cell(r.get(key), decimals) for _, key, decimals in COLUMNS] for r in rows]
    widths = [max([len(head)] + [len(c[i]) for c in cells]) for i, (head, _, _) in
              enumerate(COLUMNS)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if d < 0 else v.rjust(w) for v, w, (_, _, d) in
                         zip(values, widths, COLUMNS, strict=True)).rstrip()

    return "\n".join([line([h for h, _, _ in COLUMNS])] + [line(c) for c in cells])


def _cell(value: Any, decimals: int) -> str:
    if value is None:
        return "-"
    if decimals < 0 or isinstance(value, str):
        return str(value)
    if abs(value) >= 1000:
        decimals = 0
    return f"{value:.{decimals}f}"


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _text(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


# ---- sampling and printing ---------------------------------------------------------------------


def run(args) -> int:
    import trio

    from nokvpy.cluster.local import LocalCluster

    cluster = LocalCluster(Path(args.dir))
    spec = cluster.load()  # ClusterError: "no cluster in DIR (run `nokv cluster up ...`)"
    if not any(p.metrics_address for p in spec.serving().processes):
        raise CliError(f"no process of the cluster in {cluster.root} has a metrics endpoint: "
                       f"{cluster.spec_path} was written before processes served metrics (stop "
                       f"the cluster with `nokv cluster down --dir {args.dir}` and start it "
                       f"again with `nokv cluster up --dir {args.dir}`: it gets metrics ports "
                       "then)")
    screen = Screen(args, spec.cluster_id, sys.stdout)
    try:
        trio.run(_top, args, cluster, spec, screen)
    except BaseException as exc:
        if not _interrupted(exc):
            raise
    return 0


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C: a KeyboardInterrupt, alone or grouped (it may reach a sampling task)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_interrupted(e) for e in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


async def _top(args, cluster, spec, screen: Screen) -> None:
    import trio

    screen.waiting(len(spec.serving().processes))
    previous = await sample(spec.serving().processes, args.timeout)
    next_at = trio.current_time() + args.interval
    frames = 0
    while args.count is None or frames < args.count:
        await trio.sleep_until(next_at)
        next_at = max(next_at + args.interval, trio.current_time())
        spec = _reload(cluster, spec)  # a store added or retired meanwhile
        procs = spec.serving().processes
        current = await sample(procs, args.timeout)
        for proc in procs:  # say which ones are not running at all
            scrape = current[proc.name]
            if scrape.families is None and proc.metrics_address and cluster.pid(proc.name) is None:
                current[proc.name] = Scrape(scrape.at, None, "not running")
        rows = frame_rows([(p.name, p.kind) for p in procs], previous, current)
        screen.frame(rows)
        previous = current
        frames += 1


def _reload(cluster, spec):
    from nokvpy.cluster.local import ClusterError

    try:
        return cluster.load()
    except ClusterError:  # rewritten at this moment, or removed: keep what we had
        return spec


async def sample(processes: Sequence[Any], timeout: float) -> dict[str, Scrape]:
    """Every process's metrics at once, by name; each has `timeout` seconds to answer."""
    import trio

    out: dict[str, Scrape] = {}
    async with trio.open_nursery() as nursery:
        for proc in processes:
            nursery.start_soon(_scrape_into, out, proc, timeout)
    return out


async def _scrape_into(out: dict[str, Scrape], proc: Any, timeout: float) -> None:
    import trio

    from nokvpy import metrics
    from nokvpy.rpc.metrics_http import MetricsFetchError, fetch_metrics

    if not proc.metrics_address:
        out[proc.name] = Scrape(trio.current_time(), None, "no metrics endpoint")
        return
    try:
        text = await fetch_metrics(proc.metrics_address, timeout)
        families = by_name(metrics.parse(text))
    except MetricsFetchError as exc:
        out[proc.name] = Scrape(trio.current_time(), None, _reason(str(exc)))
        return
    except ValueError as exc:
        out[proc.name] = Scrape(trio.current_time(), None, f"not Prometheus text: {exc}")
        return
    out[proc.name] = Scrape(trio.current_time(), families)


def _reason(message: str) -> str:
    """A fetch failure in a few words (the table's role column)."""
    if message.startswith("no answer"):
        return "no answer"
    if message.startswith("cannot reach"):
        return "unreachable"
    return message


class Screen:
    """Where frames go: redrawn in place on a terminal, appended otherwise, JSON lines."""

    def __init__(self, args, cluster_id: str, out) -> None:
        self.out = out
        self.json = args.json
        self.interval = args.interval
        self.cluster_id = cluster_id
        self.tty = not args.json and out.isatty()
        self.frames = 0

    def waiting(self, processes: int) -> None:
        if self.tty:
            self._write(CLEAR + self._header(processes, 0)
                        + f"\nsampling; the first frame comes in {self.interval:g} s\n")

    def frame(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if self.json:
            self._write(json.dumps({"time": round(time.time(), 3), "cluster": self.cluster_id,
                                    "interval": self.interval, "processes": list(rows)}) + "\n")
            return
        header = self._header(len(rows), sum(1 for r in rows if not r["up"]))
        table = render_table(rows)
        if self.tty:  # table lines cut at the terminal's width rather than wrapped
            width = shutil.get_terminal_size().columns
            table = "\n".join(line[:width] for line in table.splitlines())
            self._write(f"{CLEAR}{header}\n{table}\n")
        else:
            self._write(("\n" if self.frames else "") + f"{header}\n{table}\n")
        self.frames += 1

    def _header(self, processes: int, down: int) -> str:
        text = (f"nokv top  cluster {self.cluster_id}  {time.strftime('%H:%M:%S')}  every "
                f"{self.interval:g} s  {processes} processes" + (f", {down} down" if down else ""))
        return text + ("  Ctrl-C to stop" if self.tty else "")

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
