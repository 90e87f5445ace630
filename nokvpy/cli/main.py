"""The `nokv` command.

Owns: argument parsing and turning every failure into one line on stderr with a non-zero exit
status (2 for usage errors, 1 for everything else). Never prints a traceback for an expected
failure; set NOKV_DEBUG=1 to see one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_DIR = os.environ.get("NOKV_DIR", "./nokv-cluster")


class CliError(Exception):
    """An expected failure: printed as one line, exit status 1."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        print(f"nokv: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def key_text(text: str) -> str:
    """A key or value argument: `0x...` is hex, anything else UTF-8. Checked while parsing, so a
    malformed one is a usage error; the string itself is kept (data_cmd converts it)."""
    if text.startswith("0x"):
        try:
            bytes.fromhex(text[2:])
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad hex {text!r}: expected 0x followed by an even number of hex digits") from None
    return text


def positive(kind):
    def check(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
        return value

    check.__name__ = f"positive {kind.__name__}"
    return check


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=DEFAULT_DIR, help="local cluster directory (default %(default)s)")
    p.add_argument("--coordinator", default=None,
                   help="coordinator address(es) host:port[,host:port] instead of --dir "
                        "(with NOKV_CLUSTER_ID and NOKV_CLUSTER_SECRET from the environment)")
    p.add_argument("--timeout", type=positive(float), default=10.0, help="seconds per request")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="nokv", description="nokvpy: a Raft-replicated range-partitioned KV store")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    # ---- cluster --------------------------------------------------------------------------
    cl = sub.add_parser("cluster", help="run a local multi-process cluster")
    clsub = cl.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    up = clsub.add_parser("up", help="create (if needed) and start a local cluster")
    up.add_argument("--dir", default=DEFAULT_DIR)
    up.add_argument("--metaroot", type=int, default=1, choices=[1, 3, 5], help="metaroot peers: 1, 3 or 5")
    up.add_argument("--coordinators", type=positive(int), default=1)
    up.add_argument("--stores", type=positive(int), default=3)
    up.add_argument("--replication", type=positive(int), default=3,
                    help="replicas per region (at most --stores)")
    up.add_argument("--wait", type=positive(float), default=60.0, help="seconds to wait until serving")
    add_json(up)
    for name, text in (("down", "stop every process"), ("status", "list processes and health")):
        p = clsub.add_parser(name, help=text)
        p.add_argument("--dir", default=DEFAULT_DIR)
        add_json(p)
    logs = clsub.add_parser("logs", help="print a process's log (default: all, last lines)")
    logs.add_argument("name", nargs="?")
    logs.add_argument("--dir", default=DEFAULT_DIR)
    logs.add_argument("--lines", type=non_negative, default=20)
    for name, text in (("kill", "kill -9 a process"), ("restart", "start a stopped process (or restart)"),
                       ("pause", "SIGSTOP a process"), ("resume", "SIGCONT a process"),
                       ("stop", "stop a process gracefully")):
        p = clsub.add_parser(name, help=text)
        p.add_argument("name")
        p.add_argument("--dir", default=DEFAULT_DIR)
        add_json(p)

    # ---- serve ----------------------------------------------------------------------------
    for kind in ("metaroot", "coordinator", "store"):
        kp = sub.add_parser(kind, help=f"{kind} process")
        ksub = kp.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
        s = ksub.add_parser("serve", help=f"run a {kind}")
        s.add_argument("--id", type=int, required=True)
        s.add_argument("--listen", required=True, help="host:port")
        s.add_argument("--cluster-id", default=os.environ.get("NOKV_CLUSTER_ID", "nokv"))
        if kind == "metaroot":
            s.add_argument("--peer", action="append", default=[], help="id=host:port (repeat)")
            s.add_argument("--data", required=True)
            s.add_argument("--retained-tail", type=int, default=4096)
        elif kind == "coordinator":
            s.add_argument("--metaroot", required=True, help="metaroot addresses, comma separated")
            s.add_argument("--replication", type=int, default=3)
            s.add_argument("--grant-ttl", type=float, default=6.0)
            s.add_argument("--staleness-window", type=float, default=3.0)
            s.add_argument("--scheduler", default=None,
                           help="scheduler options, e.g. split_keys=1000,repair_after=30,"
                                "merge_keys=0,stuck_after=15 (also NOKV_SCHEDULER)")
        else:
            s.add_argument("--coordinator", required=True, help="coordinator addresses, comma separated")
            s.add_argument("--data", required=True)
            s.add_argument("--tick-ms", type=int, default=100)

    # ---- data -----------------------------------------------------------------------------
    kv = sub.add_parser("kv", help="key-value operations")
    kvsub = kv.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    keyhelp = "a key: UTF-8 text, or 0x followed by hex"
    g = kvsub.add_parser("get", help="read a key (exit status 1 when it is absent)")
    g.add_argument("key", type=key_text, help=keyhelp)
    g.add_argument("--read", choices=["linearizable", "follower", "stale"], default="linearizable")
    p = kvsub.add_parser("put", help="write a key")
    p.add_argument("key", type=key_text, help=keyhelp)
    p.add_argument("value", type=key_text, help="UTF-8 text, or 0x followed by hex")
    d = kvsub.add_parser("delete", help="delete a key")
    d.add_argument("key", type=key_text, help=keyhelp)
    sc = kvsub.add_parser("scan", help="keys in [START, END) in order")
    sc.add_argument("start", nargs="?", default="", type=key_text, help="first key (default: the start)")
    sc.add_argument("end", nargs="?", default="", type=key_text, help="end key, exclusive (default: the end)")
    sc.add_argument("--limit", type=positive(int), default=100)
    cas = kvsub.add_parser("cas", help="compare and swap")
    cas.add_argument("key", type=key_text, help=keyhelp)
    cas.add_argument("expected", type=key_text, help="expected value, or - for absent")
    cas.add_argument("new", type=key_text, help="new value, or - to delete")
    for q in (g, p, d, sc, cas):
        add_target(q)
        add_json(q)

    r = sub.add_parser("route", help="which region holds KEY, with the freshness witness")
    r.add_argument("key", type=key_text, help="a key: UTF-8 text, or 0x followed by hex")
    r.add_argument("--freshness", choices=["strong", "bounded", "best-effort"], default="bounded")
    r.add_argument("--max-root-lag", type=non_negative, default=None)
    r.add_argument("--required-root-token", type=non_negative, default=None, help="root index")
    add_target(r)
    add_json(r)

    rg = sub.add_parser("regions", help="list regions")
    add_target(rg)
    add_json(rg)
    st = sub.add_parser("stores", help="list stores")
    add_target(st)
    add_json(st)

    tr = sub.add_parser("transitions", help="topology transitions")
    trsub = tr.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    tl = trsub.add_parser("list")
    ts = trsub.add_parser("show")
    ts.add_argument("id")
    for q in (tl, ts):
        add_target(q)
        add_json(q)

    ex = sub.add_parser("execution", help="execution status of a store")
    ex.add_argument("store", help="store name (store-2), id (2) or address")
    add_target(ex)
    add_json(ex)

    dg = sub.add_parser("diag", help="coordinator and metaroot diagnostics")
    add_target(dg)
    add_json(dg)

    ad = sub.add_parser("admin", help="topology commands")
    adsub = ad.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    a = adsub.add_parser("split")
    a.add_argument("key", type=key_text, help="split key (the new right region starts here)")
    a = adsub.add_parser("merge")
    a.add_argument("left", type=int, help="left region id")
    a.add_argument("right", type=int, help="right region id")
    for name in ("add-peer", "remove-peer", "transfer-leader"):
        a = adsub.add_parser(name)
        a.add_argument("region", type=int)
        a.add_argument("store", type=int)
    a = adsub.add_parser("tombstone")
    a.add_argument("region", type=int)
    for a in adsub.choices.values():
        add_target(a)
        add_json(a)
        a.set_defaults(timeout=30.0)  # a topology change waits for its transition to apply

    fp = sub.add_parser("failpoint", help="failpoints of a running process")
    fpsub = fp.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    f = fpsub.add_parser("set")
    f.add_argument("process", help="process name (store-1) or address")
    f.add_argument("name", help="a failpoint name (docs/operations.md lists them)")
    f.add_argument("spec", help="off | raise | panic | sleep(MS) | delay(MS) | drop | exit[(CODE)] "
                                "| return[(VALUE)], each with optional N* (times) or P%% "
                                "(probability) prefixes, joined by ->")
    f = fpsub.add_parser("clear")
    f.add_argument("process")
    f.add_argument("name", nargs="?", default="")
    f = fpsub.add_parser("list")
    f.add_argument("process")
    for f in fpsub.choices.values():
        add_target(f)
        add_json(f)

    b = sub.add_parser("bench", help="benchmark a cluster (starts one when none is given)")
    b.add_argument("workload", choices=["puts", "gets", "routes"])
    b.add_argument("--clients", type=positive(int), default=16)
    b.add_argument("--duration", type=positive(float), default=10.0)
    b.add_argument("--regions", type=positive(int), default=1)
    b.add_argument("--value-size", type=non_negative, default=100)
    b.add_argument("--dir", default=None)
    b.add_argument("--coordinator", default=None)
    b.add_argument("--timeout", type=positive(float), default=10.0)
    add_json(b)

    dm = sub.add_parser("demo", help="a narrated tour of a local cluster")
    dm.add_argument("--keep", action="store_true", help="leave the cluster running")
    dm.add_argument("--dir", default=None)

    jp = sub.add_parser("jepsen", help="fault injection with a history checker "
                        "(`nokv jepsen --help` is jepsen-lite's own help)", add_help=False)
    jp.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "cluster":
        from nokvpy.cli import cluster_cmd

        return cluster_cmd.run(args)
    if cmd in ("metaroot", "coordinator", "store"):
        from nokvpy.cli import serve_cmd

        return serve_cmd.run(args)
    if cmd == "bench":
        from nokvpy.cli import bench_cmd

        return bench_cmd.run(args)
    if cmd == "demo":
        from nokvpy.cli import demo_cmd

        return demo_cmd.run(args)
    if cmd == "jepsen":
        return run_jepsen(args.args)
    from nokvpy.cli import data_cmd

    return data_cmd.run(args)


def run_jepsen(argv: list[str]) -> int:
    try:
        from jepsen_lite.cli import main as jepsen_main
    except ImportError:  # not installed (`pip install -e .`): use the source tree
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jepsen-lite"))
        from jepsen_lite.cli import main as jepsen_main

    return jepsen_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["jepsen"]:  # everything after `jepsen`, --help included, is jepsen-lite's
            return run_jepsen(argv[1:])
        return dispatch(build_parser().parse_args(argv))
    except KeyboardInterrupt:
        print("nokv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `nokv diag | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the one place that turns errors into lines
        if os.environ.get("NOKV_DEBUG"):
            raise
        print(f"nokv: {describe(exc)}", file=sys.stderr)
        return 1


def describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return describe(exc.exceptions[0])
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    known = ("CliError", "ClusterError")
    return text if name in known and text else f"{name}: {text}" if text else name


if __name__ == "__main__":
    sys.exit(main())
