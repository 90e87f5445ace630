"""``python -m jepsen_lite run``: argument parsing for a cluster run; registers itself with
:func:`jepsen_lite.cli.register_subcommand` on import.

Owns only the command line of the run (options, ``--json`` output, exit status 0 valid /
1 invalid / 2 unknown or error). The run itself is :func:`jepsen_lite.runner.run`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from .commands import EXIT_UNKNOWN, SUBCOMMANDS, register_subcommand
from .faults import ALIASES, FAULTS, NemesisError, parse_faults


def _pair(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    try:
        lo = float(low)
        hi = float(high) if high else lo
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX seconds, got {text!r}") from None
    if lo <= 0 or hi < lo:
        raise argparse.ArgumentTypeError(f"expected 0 < MIN <= MAX, got {text!r}")
    return lo, hi


def _env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _workload_option(text: str) -> tuple[str, object]:
    name, value = _env(text)
    for kind in (int, float):
        try:
            return name.replace("-", "_"), kind(value)
        except ValueError:
            pass
    return name.replace("-", "_"), value


def _lease_modes(text: str) -> tuple[str, ...]:
    from .lease import LEASE_MODES

    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in LEASE_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"lease modes are {','.join(LEASE_MODES)}, got {text!r}")
    return modes


def configure(parser: argparse.ArgumentParser) -> None:
    from .watchload import WORKLOADS  # every workload, watch included

    faults = "; ".join(f"{k}: {v}" for k, v in FAULTS.items())
    aliases = "; ".join(f"{k} = {','.join(v) or '-'}" for k, v in ALIASES.items())
    parser.epilog = f"faults: {faults}. aliases: {aliases}."
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="register")
    parser.add_argument("--workload-option", type=_workload_option, action="append", default=[],
                        metavar="NAME=VALUE",
                        help="a workload's own option, e.g. watch: watchers=10, prefixes=3, "
                             "resume_every=8 (s), marker_timeout=60 (s), watch_keep=N (a tiny "
                             "store change log on purpose: compacted watches are expected)")
    parser.add_argument("--nemesis", default="kill,partition",
                        help="comma-separated faults (or 'none', 'all'); default kill,partition")
    parser.add_argument("--time-limit", type=float, default=60.0, metavar="S",
                        help="seconds of workload (default 60)")
    parser.add_argument("--rate", type=float, default=30.0,
                        help="target operations per second over all clients (0 = as fast as possible)")
    parser.add_argument("--concurrency", type=int, default=6, help="client workers (default 6)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the schedule and the clients (default: random, printed)")
    parser.add_argument("--dir", default=None,
                        help="run directory, must not hold a run (default runs/DATE-WORKLOAD-sSEED)")
    parser.add_argument("--keys", type=int, default=5, help="keys the clients use")
    parser.add_argument("--op-timeout", type=float, default=2.0, metavar="S",
                        help="client deadline per operation")
    parser.add_argument("--metaroots", type=int, default=1, choices=(1, 3, 5))
    parser.add_argument("--coordinators", type=int, default=1)
    parser.add_argument("--stores", type=int, default=3)
    parser.add_argument("--replication", type=int, default=3)
    parser.add_argument("--fault-duration", type=_pair, default=(3.0, 8.0), metavar="MIN,MAX",
                        help="length of a fault window in seconds (default 3,8)")
    parser.add_argument("--fault-quiet", type=_pair, default=(2.0, 5.0), metavar="MIN,MAX",
                        help="quiet time between fault windows (default 2,5)")
    parser.add_argument("--leader-share", type=float, default=0.35, metavar="P",
                        help="share of kill/pause/partition windows aimed at a region leader")
    parser.add_argument("--lease-modes", type=_lease_modes,
                        default=("store", "metaroot", "coordinator"), metavar="MODES",
                        help="which leaders lease windows pause: store,metaroot,coordinator "
                             "(default all three)")
    parser.add_argument("--lease-isolate", type=float, default=0.5, metavar="P",
                        help="share of lease windows that also cut the paused leader off from "
                             "the other servers until the reads at it are done (default 0.5)")
    parser.add_argument("--recovery-timeout", type=float, default=30.0, metavar="S",
                        help="after healing, how long the topology may take to recover: every "
                             "region with exactly --replication voters on live stores, every "
                             "store hosting exactly the catalog's peers (default 30)")
    parser.add_argument("--churn-store-fault", type=float, default=0.5, metavar="P",
                        help="share of churn windows that pause or kill a voter store, remove "
                             "its replica through the survivors, heal it and add the replica "
                             "back (default 0.5; 0 = never)")
    parser.add_argument("--check-time-limit", type=float, default=120.0, metavar="S",
                        help="search budget of the linearizability checker")
    parser.add_argument("--ready-timeout", type=float, default=60.0, metavar="S")
    parser.add_argument("--env", type=_env, action="append", default=[], metavar="NAME=VALUE",
                        help="environment for every cluster process (e.g. NOKV_UNSAFE_READS=1)")
    parser.add_argument("--keep-cluster", action="store_true",
                        help="leave the cluster processes running at the end")
    parser.add_argument("--json", action="store_true", help="print results.json to stdout")


def config_from_args(args: argparse.Namespace):
    from .runner import RunConfig

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    run_dir = args.dir or time.strftime(f"runs/%Y%m%d-%H%M%S-{args.workload}-s{seed}")
    return RunConfig(
        workload=args.workload,
        nemesis=parse_faults(args.nemesis),
        time_limit=args.time_limit,
        rate=args.rate,
        concurrency=args.concurrency,
        seed=seed,
        dir=run_dir,
        keys=args.keys,
        op_timeout=args.op_timeout,
        metaroots=args.metaroots,
        coordinators=args.coordinators,
        stores=args.stores,
        replication=args.replication,
        env=dict(args.env),
        check_time_limit=args.check_time_limit,
        ready_timeout=args.ready_timeout,
        fault_duration=args.fault_duration,
        fault_quiet=args.fault_quiet,
        leader_share=args.leader_share,
        lease_modes=tuple(args.lease_modes),
        lease_isolate=args.lease_isolate,
        recovery_timeout=args.recovery_timeout,
        churn_store_fault=args.churn_store_fault,
        keep_cluster=args.keep_cluster,
        workload_options=dict(args.workload_option),
    )


def run(args: argparse.Namespace) -> int:
    from .report import summary_text
    from .runner import run as run_config

    try:
        config = config_from_args(args)
    except NemesisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    if config.concurrency < 1 or config.time_limit <= 0:
        print("error: --concurrency must be >= 1 and --time-limit > 0", file=sys.stderr)
        return EXIT_UNKNOWN
    try:
        from .watchload import make_workload

        make_workload(config.workload, keys=config.keys, **config.workload_options)
    except (TypeError, ValueError) as exc:
        print(f"error: --workload-option: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    try:
        results = run_config(config)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        print(summary_text(results))
        sub = results.get("failing_subhistory_events")
        if sub:
            print(f"\nminimal failing sub-history ({len(sub)} events, "
                  f"{results['dir']}/failing-subhistory.jsonl):")
            for event in sub:
                print("  " + json.dumps(event, default=str))
    return int(results["exit_code"])


def register() -> None:
    register_subcommand("run", "run a workload against a local cluster under a nemesis", configure, run)


if "run" not in SUBCOMMANDS:
    register()
