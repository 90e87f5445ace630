"""Command line of jepsen-lite: argument parsing, summary tables and exit codes.

This module owns the ``python -m jepsen_lite`` interface. It only reads the files it is
given and prints to stdout/stderr; it never writes files and never runs a cluster.

Exit status: 0 valid, 1 invalid, 2 unknown or error.

Subcommands live in :data:`SUBCOMMANDS`. Another module (for example the cluster runner)
adds one with :func:`register_subcommand` before calling :func:`main`::

    from jepsen_lite.cli import register_subcommand
    register_subcommand("run", "run a workload against a cluster", configure, run)

where ``configure(parser)`` adds arguments to an ``argparse.ArgumentParser`` and
``run(args) -> int`` returns the exit status. The registry, the exit statuses and
:func:`format_table` live in :mod:`.commands` and are re-exported here.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .checkers import check_route_reads, check_transitions
from .commands import (
    EXIT_INVALID,
    EXIT_UNKNOWN,
    EXIT_VALID,
    SUBCOMMANDS,
    Subcommand,
    exit_status,
    format_table,
    register_subcommand,
)
from .history import History, HistoryError
from .linearizable import check_linearizable
from .models import MODELS, ModelError

__all__ = [
    "EXIT_INVALID",
    "EXIT_UNKNOWN",
    "EXIT_VALID",
    "SUBCOMMANDS",
    "Subcommand",
    "build_parser",
    "exit_status",
    "format_table",
    "main",
    "register_subcommand",
]


def _verdict(valid: Any) -> str:
    if valid is True:
        return "valid"
    if valid is False:
        return "INVALID"
    return str(valid)


# -- check --------------------------------------------------------------------------------


def _configure_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("history", help="history file (JSON Lines)")
    parser.add_argument("--model", choices=sorted(MODELS), default="register")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        metavar="S",
        help="search budget in seconds; past it the verdict is unknown",
    )
    parser.add_argument(
        "--shrink-time-limit",
        type=float,
        default=10.0,
        metavar="S",
        help="budget for shrinking a failing key's history",
    )
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")


def _run_check(args: argparse.Namespace) -> int:
    history = History.load(args.history)
    result = check_linearizable(
        history,
        args.model,
        time_limit=args.time_limit,
        shrink_time_limit=args.shrink_time_limit,
    )
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return exit_status(result["valid"])
    rows = []
    for key, r in result["per_key"].items():
        note = r.get("reason", "")
        if r["valid"] is False:
            note = f"stuck at op {r.get('stuck_op')}, state {r.get('state_at_failure')!r}"
        rows.append(
            [
                key,
                r.get("ops", ""),
                r.get("indeterminate", ""),
                _verdict(r["valid"]),
                r.get("elapsed_s", ""),
                note,
            ]
        )
    print(format_table(["key", "ops", "info", "result", "seconds", "note"], rows))
    print()
    print(
        f"model {result['model']}: {_verdict(result['valid'])} "
        f"({len(rows)} keys, {result['ignored_ops']} ops of other kinds ignored, "
        f"{result['elapsed_s']:.3f} s)"
    )
    if result["minimal_failing_subhistory"]:
        events = result["minimal_failing_subhistory"]
        print(
            f"failing key {result['failing_key']}: minimal failing sub-history "
            f"({len(events)} events):"
        )
        for event in events:
            print("  " + json.dumps(event, default=str))
    return exit_status(result["valid"])


# -- check-routes / check-transitions ---------------------------------------------------


def _configure_simple(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="JSON Lines file")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")


def _print_violations(result: dict, what: str) -> None:
    rows = [
        [v["kind"], v.get("op", v.get("transition_id", "")), v.get("detail", "")]
        for v in result["violations"]
    ]
    if rows:
        print(format_table(["violation", "op/id", "detail"], rows))
        print()
    print(f"{what}: {_verdict(result['valid'])} ({len(rows)} violations)")


def _run_routes(args: argparse.Namespace) -> int:
    result = check_route_reads(History.load(args.path))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        _print_violations(result, f"route reads ({result['checked']} checked)")
    return exit_status(result["valid"])


def _run_transitions(args: argparse.Namespace) -> int:
    with open(args.path, encoding="utf-8") as fh:
        events = [json.loads(line) for line in fh if line.strip()]
    result = check_transitions(events)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        _print_violations(result, f"transitions ({result['transitions']} seen)")
    return exit_status(result["valid"])


register_subcommand("check", "check a history for linearizability", _configure_check, _run_check)
register_subcommand(
    "check-routes",
    "check route replies against the freshness contract",
    _configure_simple,
    _run_routes,
)
register_subcommand(
    "check-transitions",
    "check transition events (one outcome each)",
    _configure_simple,
    _run_transitions,
)


def _load_extensions() -> None:
    """Register subcommands that live in other modules (``run``: :mod:`.run_cli`, ``soak``:
    :mod:`.soak`, ``index``: :mod:`.htmlindex`) unless a subcommand of that name is
    registered already."""
    if "run" not in SUBCOMMANDS:
        from . import run_cli

        run_cli.register()
    if "soak" not in SUBCOMMANDS:
        from . import soak

        soak.register()
    if "index" not in SUBCOMMANDS:
        from . import htmlindex

        htmlindex.register()


def build_parser() -> argparse.ArgumentParser:
    _load_extensions()
    parser = argparse.ArgumentParser(
        prog="python -m jepsen_lite", description="jepsen-lite history checkers"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in SUBCOMMANDS.items():
        command.configure(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        return SUBCOMMANDS[args.command].run(args)
    except (HistoryError, ModelError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
