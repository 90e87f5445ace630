"""``python -m jepsen_lite soak``: many short seeded runs, one after another, and a summary.

Owns the soak loop: run ``python -m jepsen_lite run`` once per seed (``--seed-start`` ..
``--seed-start + --runs - 1``), each in its own process and its own run directory
(``DIR/seed-NNNN``), cycling the cluster shapes of ``--shapes``; print one progress line per
run; append each run's outcome to ``DIR/soak.jsonl`` as it finishes (so a soak that is still
going, or was stopped, can be read); write ``DIR/soak.json`` and print a summary at the end
(runs, valid / invalid / unknown, the seeds of every invalid or unknown run with the checker
that said so, the command that reproduces it). ``--resume`` skips seeds already in
``soak.jsonl``.

Never injects faults or checks histories itself (each run does), never deletes a run
directory. Exit status: 0 when every run was valid, 1 when some run was invalid, 2 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .commands import EXIT_UNKNOWN, SUBCOMMANDS, register_subcommand

DEFAULT_NEMESIS = "lease,kill,partition,slow-net,churn"
RUN_GRACE = 300.0
"""Seconds a run may take beyond its time limit (start, heal, final reads, check)."""


def _shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        m, sep, c = part.strip().partition("x")
        try:
            shape = (int(m), int(c))
        except ValueError:
            raise argparse.ArgumentTypeError(f"shapes are METAROOTSxCOORDINATORS, e.g. 1x1,3x2; "
                                             f"got {text!r}") from None
        if shape[0] not in (1, 3, 5) or shape[1] < 1:
            raise argparse.ArgumentTypeError(f"bad shape {part!r}")
        out.append(shape)
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=200, help="number of runs (default 200)")
    parser.add_argument("--seed-start", type=int, default=1, help="seed of the first run")
    parser.add_argument("--time-limit", type=float, default=18.0, metavar="S",
                        help="seconds of workload per run (default 18)")
    parser.add_argument("--workload", default="register")
    parser.add_argument("--nemesis", default=DEFAULT_NEMESIS,
                        help=f"faults of every run (default {DEFAULT_NEMESIS})")
    parser.add_argument("--shapes", type=_shapes, default=[(1, 1), (3, 2)],
                        metavar="MxC,...",
                        help="cluster shapes (metaroot peers x coordinators) used in turn "
                             "(default 1x1,3x2)")
    parser.add_argument("--dir", default="runs/soak", help="soak directory (default runs/soak)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for every cluster process (e.g. NOKV_UNSAFE_LEASE=1)")
    parser.add_argument("--resume", action="store_true",
                        help="skip the seeds already recorded in DIR/soak.jsonl")
    parser.add_argument("--stop-on-invalid", action="store_true",
                        help="stop after the first invalid run")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as JSON (progress lines go to stderr)")
    parser.add_argument("run_args", nargs=argparse.REMAINDER, metavar="-- RUN-ARGS",
                        help="further options for every `run` (after --), e.g. -- --rate 60")


def run_command(args: argparse.Namespace, seed: int, shape: tuple[int, int], run_dir: Path
                ) -> list[str]:
    cmd = [sys.executable, "-m", "jepsen_lite", "run", "--workload", args.workload,
           "--nemesis", args.nemesis, "--time-limit", f"{args.time_limit:g}",
           "--seed", str(seed), "--metaroots", str(shape[0]),
           "--coordinators", str(shape[1]), "--dir", str(run_dir)]
    for env in args.env:
        cmd += ["--env", env]
    extra = list(args.run_args or [])
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return cmd + extra


def _stop_cluster(run_dir: Path) -> None:
    """Stop what a killed runner left running (its cluster processes have their own
    sessions)."""
    try:
        from nokvpy.cluster.local import LocalCluster

        cluster = LocalCluster(run_dir / "cluster")
        if cluster.exists():
            cluster.stop_all(cluster.load(), 2.0)
    except Exception:  # noqa: BLE001, S110 - best effort
        pass


def one_run(args: argparse.Namespace, seed: int, shape: tuple[int, int], root: Path) -> dict:
    """Run one seed; returns the soak.jsonl record."""
    run_dir = root / f"seed-{seed:04d}"
    cmd = run_command(args, seed, shape, run_dir)
    t0 = time.monotonic()
    record: dict[str, Any] = {"seed": seed, "shape": f"{shape[0]}x{shape[1]}",
                              "dir": str(run_dir)}
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"seed-{seed:04d}.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=args.time_limit + RUN_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _stop_cluster(run_dir)
            code = None
            record["error"] = f"run did not finish within {args.time_limit + RUN_GRACE:g}s"
    record["seconds"] = round(time.monotonic() - t0, 1)
    record["exit_code"] = code
    results_path = run_dir / "results.json"
    if not results_path.exists():
        record["valid"] = "unknown"
        record.setdefault("error", f"no results.json (exit {code}); see {root}/seed-{seed:04d}.log")
        return record
    try:
        results = json.loads(results_path.read_text())
    except ValueError as exc:
        record["valid"] = "unknown"
        record["error"] = f"results.json unreadable: {exc}"
        return record
    return {**record, **summarize(results)}


def summarize(results: dict) -> dict:
    """The soak.jsonl fields of one run's results.json."""
    checks = results.get("checks") or {}
    by_type = (results.get("ops") or {}).get("by_type") or {}
    faults: dict[str, int] = {}
    probes = {"ok": 0, "fail": 0, "info": 0}
    for iv in results.get("nemesis_intervals") or []:
        if iv.get("fault") == "heal":
            continue
        faults[iv["fault"]] = faults.get(iv["fault"], 0) + 1
        result = iv.get("result") or {}
        for key in ("probe_reads", "confirms_after", "strong_after"):
            for k in probes:
                probes[k] += int((result.get(key) or {}).get(k, 0))
        for stall in result.get("stalls") or []:
            for k in probes:
                probes[k] += int((stall.get("probe_reads") or {}).get(k, 0))
    out: dict[str, Any] = {
        "valid": results.get("valid"),
        "checks": {name: c.get("valid") for name, c in checks.items()},
        "ops": {k: by_type.get(k, 0) for k in ("ok", "fail", "info")},
        "faults": faults,
        "probe_reads": probes,
        "reproduce": results.get("reproduce"),
    }
    bad = {name: c for name, c in checks.items() if c.get("valid") is not True}
    if bad:
        out["problems"] = {
            name: (c.get("note") or c.get("failing_key")
                   or [v.get("kind") for v in (c.get("violations") or [])[:3]] or c.get("valid"))
            for name, c in bad.items()
        }
    if results.get("error"):
        out["error"] = str(results["error"])[:300]
    return out


def load_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def summary(records: list[dict], started: float | None = None) -> dict:
    def seeds(pred) -> list[int]:
        return sorted(r["seed"] for r in records if pred(r.get("valid")))

    faults: dict[str, int] = {}
    probes = {"ok": 0, "fail": 0, "info": 0}
    ops = {"ok": 0, "fail": 0, "info": 0}
    for r in records:
        for k, v in (r.get("faults") or {}).items():
            faults[k] = faults.get(k, 0) + v
        for k in probes:
            probes[k] += (r.get("probe_reads") or {}).get(k, 0)
            ops[k] += (r.get("ops") or {}).get(k, 0)
    invalid = seeds(lambda v: v is False)
    return {
        "runs": len(records),
        "valid": len(seeds(lambda v: v is True)),
        "invalid": len(invalid),
        "unknown": len(seeds(lambda v: v is not True and v is not False)),
        "invalid_seeds": invalid,
        "unknown_seeds": seeds(lambda v: v is not True and v is not False),
        "problems": {str(r["seed"]): {"valid": r.get("valid"), "problems": r.get("problems"),
                                      "error": r.get("error"), "reproduce": r.get("reproduce"),
                                      "dir": r.get("dir")}
                     for r in records if r.get("valid") is not True},
        "ops": ops,
        "fault_windows": dict(sorted(faults.items())),
        "probe_reads": probes,
        "run_seconds": round(sum(r.get("seconds", 0) for r in records), 1),
        **({"wall_seconds": round(time.monotonic() - started, 1)} if started else {}),
    }


def _line(i: int, total: int, r: dict, s: dict) -> str:
    verdict = {True: "valid", False: "INVALID"}.get(r.get("valid"), str(r.get("valid")))
    ops = r.get("ops") or {}
    probes = r.get("probe_reads") or {}
    faults = ",".join(f"{k}:{v}" for k, v in sorted((r.get("faults") or {}).items()))
    extra = f"  {r['problems']}" if r.get("problems") else ""
    extra += f"  error: {r['error']}" if r.get("error") else ""
    return (f"[{i:>4}/{total}] seed {r['seed']:<5} {r['shape']}  {verdict:<8} "
            f"ops {ops.get('ok', 0)}/{ops.get('fail', 0)}/{ops.get('info', 0)}  "
            f"probe reads ok/fail {probes.get('ok', 0)}/{probes.get('fail', 0)}  "
            f"[{faults}]  {r.get('seconds', 0):.0f}s  | {s['runs']} runs, {s['invalid']} "
            f"invalid, {s['unknown']} unknown{extra}")


def run(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "soak.jsonl"
    records = load_records(log_path) if args.resume else []
    if not args.resume and log_path.exists() and log_path.stat().st_size:
        print(f"error: {log_path} exists (use --resume or another --dir)", file=sys.stderr)
        return EXIT_UNKNOWN
    done = {r["seed"] for r in records}
    out = sys.stderr if args.json else sys.stdout
    started = time.monotonic()
    seeds = [args.seed_start + i for i in range(args.runs)]
    print(f"soak: {len(seeds)} runs of {args.time_limit:g}s, workload {args.workload}, nemesis "
          f"{args.nemesis}, shapes {','.join(f'{m}x{c}' for m, c in args.shapes)}, env "
          f"{args.env or '-'}, dir {root}", file=out, flush=True)
    try:
        for i, seed in enumerate(seeds):
            if seed in done:
                continue
            shape = args.shapes[i % len(args.shapes)]
            record = one_run(args, seed, shape, root)
            records.append(record)
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, default=str) + "\n")
            print(_line(i + 1, len(seeds), record, summary(records)), file=out, flush=True)
            if args.stop_on_invalid and record.get("valid") is False:
                break
    except KeyboardInterrupt:
        print("interrupted", file=out, flush=True)
    result = summary(records, started)
    (root / "soak.json").write_text(json.dumps(result, indent=2, default=str))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"\nsoak done: {result['runs']} runs, {result['valid']} valid, {result['invalid']} "
              f"invalid {result['invalid_seeds'] or ''}, {result['unknown']} unknown "
              f"{result['unknown_seeds'] or ''}")
        print(f"operations ok/fail/info {result['ops']['ok']}/{result['ops']['fail']}/"
              f"{result['ops']['info']}; fault windows {result['fault_windows']}; reads at "
              f"resumed leaders ok/fail {result['probe_reads']['ok']}/"
              f"{result['probe_reads']['fail']}")
        for seed, p in result["problems"].items():
            print(f"  seed {seed}: {p['valid']} {p['problems'] or ''} {p['error'] or ''}\n"
                  f"    {p['reproduce'] or ''}")
    if result["invalid"]:
        return 1
    return 0 if result["runs"] and not result["unknown"] else EXIT_UNKNOWN


def register() -> None:
    register_subcommand("soak", "many short seeded runs with a summary (lease, kill, partition, "
                        "slow-net, churn by default)", configure, run)


if "soak" not in SUBCOMMANDS:
    register()
