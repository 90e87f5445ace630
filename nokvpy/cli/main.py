"""The `nokv` command.

Owns: argument parsing and turning every failure into one line on stderr with a non-zero exit
status (2 for usage errors, 1 for everything else; `cluster status` exits 3 when a process is
down or unhealthy), without Python reprs. Never prints a traceback for an expected failure;
set NOKV_DEBUG=1 to see one. `CliError`, `remote_text` and `use_tls` live in
`nokvpy.cli.common` (the subcommand modules import them from there) and are re-exported here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nokvpy.cli.argtypes import addresses, key_text, non_negative, positive
from nokvpy.cli.common import CliError as CliError  # re-exported (tests, callers)
from nokvpy.cli.common import remote_text, use_tls
from nokvpy.cli.flags import (
    DEFAULT_DIR,  # noqa: F401 - re-exported
    SERVE_KINDS,
    TXN_SYNTAX,
    add_dir,
    add_json,
    add_serve_flags,
    add_target,
    add_tls,
    add_top_parser,
    tls_flags,
)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        print(f"nokv: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def version() -> str:
    """The installed package's version (pyproject.toml), from its metadata."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("nokvpy")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed: pip install -e .)"


class VersionAction(argparse.Action):
    """`--version`: reads the package metadata only when asked (it costs ~80 ms)."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"nokv {version()}")
        parser.exit()


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="nokv", description="nokvpy: a Raft-replicated range-partitioned KV store")
    parser.add_argument("--version", action=VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    # ---- cluster --------------------------------------------------------------------------
    cl = sub.add_parser("cluster", help="run a local multi-process cluster")
    clsub = cl.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    up = clsub.add_parser("up", help="create (if needed) and start a local cluster (an existing "
                                     "one keeps its shape: conflicting flags are refused)")
    add_dir(up)
    # None: not given. A new cluster takes the default; an existing one refuses a different value
    up.add_argument("--metaroot", type=int, default=None, choices=[1, 3, 5],
                    help="metaroot peers: 1, 3 or 5 (default 1)")
    up.add_argument("--coordinators", type=positive(int), default=None,
                    help="coordinator processes (default 1)")
    up.add_argument("--stores", type=positive(int), default=None, help="store processes (default 3)")
    up.add_argument("--replication", type=positive(int), default=None,
                    help="replicas per region (default 3, at most --stores)")
    up.add_argument("--wait", type=positive(float), default=60.0,
                    help="seconds to wait until the cluster serves (default %(default)g)")
    up.add_argument("--tls", action="store_true",
                    help="a new cluster talks TLS with mutual authentication: a throwaway CA "
                         "and certificates in DIR/tls (an existing cluster keeps its setting)")
    up.add_argument("--host", default=None, metavar="ADDR",
                    help="the IPv4 address (or name) of this machine every process listens on "
                         "and advertises, so other hosts can reach it (default 127.0.0.1; not a "
                         "wildcard)")
    add_json(up)
    for name, text in (("down", "stop every process (data and logs stay)"),
                       ("status", "list processes and health (exit status 3 when one is down "
                                  "or unhealthy)")):
        p = clsub.add_parser(name, help=text)
        add_dir(p)
        add_json(p)
    ast = clsub.add_parser("add-store", help="add a store to the cluster and start it")
    add_dir(ast)
    ast.add_argument("--wait", type=positive(float), default=30.0,
                     help="seconds to wait until it answers (default %(default)g)")
    add_json(ast)
    logs = clsub.add_parser("logs", help="print a process's log (default: all, last lines)")
    logs.add_argument("name", nargs="?", help="process name, e.g. store-1 (default: every process)")
    add_dir(logs)
    logs.add_argument("--lines", type=non_negative, default=20,
                      help="lines from the end of each log (default %(default)s)")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="then print lines as they are written, until Ctrl-C")
    for name, text in (("kill", "kill -9 a process"), ("restart", "start a stopped process (or restart)"),
                       ("pause", "SIGSTOP a process"), ("resume", "SIGCONT a process"),
                       ("stop", "stop a process gracefully")):
        p = clsub.add_parser(name, help=text)
        p.add_argument("name", help="process name, e.g. store-1 or coordinator-1")
        add_dir(p)
        add_json(p)

    # ---- serve ----------------------------------------------------------------------------
    for kind in SERVE_KINDS:
        kp = sub.add_parser(kind, help=f"{kind} process")
        ksub = kp.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
        s = ksub.add_parser("serve", help=f"run a {kind}")
        add_serve_flags(s, kind)
        if kind == "metaroot":
            ap = ksub.add_parser("add-peer", help="add a peer to a local cluster's metaroot")
            rp = ksub.add_parser("remove-peer", help="remove peer ID from a local cluster's "
                                 "metaroot, then stop it")
            rp.add_argument("peer_id", type=positive(int), metavar="ID", help="the peer's id")
            for mp in (ap, rp):
                add_dir(mp)
                mp.add_argument("--wait", type=positive(float), default=60.0,
                                help="seconds to wait for each step (default %(default)g)")
                add_json(mp)
    cf = sub.add_parser("config", help="serve configuration files")
    cfsub = cf.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    cs = cfsub.add_parser("show", help="the effective configuration of a serve command and where "
                          "each value comes from (flag, file, env, default)",
                          usage="nokv config show --kind KIND [--config FILE] [--json] "
                                "[serve flags ...]",
                          description="What `nokv KIND serve` given the same --config file "
                                      "and serve flags would run with (flag > file > env > "
                                      "default), as a TOML file it reads back, or the usage "
                                      "error it would stop at. Any flag of `nokv KIND serve` "
                                      "may follow.")
    cs.add_argument("--kind", required=True, choices=SERVE_KINDS,
                    help="which serve command: metaroot, coordinator or store")
    cs.add_argument("--config", default=None, metavar="FILE",
                    help="the TOML file the serve command would be given")
    cs.add_argument("--json", action="store_true",
                    help="one JSON document: each value with its source")

    # ---- data -----------------------------------------------------------------------------
    kv = sub.add_parser("kv", help="key-value operations")
    kvsub = kv.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    keyhelp = "a key: UTF-8 text, or 0x followed by hex"
    g = kvsub.add_parser("get", help="read a key (exit status 1 when it is absent)")
    g.add_argument("key", type=key_text, help=keyhelp)
    g.add_argument("--read", choices=["linearizable", "follower", "stale"], default="linearizable",
                   help="linearizable (default: ReadIndex on the leader), follower (ReadIndex "
                        "through a follower) or stale (a replica's applied state, bounded)")
    p = kvsub.add_parser("put", help="write a key")
    p.add_argument("key", type=key_text, help=keyhelp)
    p.add_argument("value", type=key_text, help="UTF-8 text, or 0x followed by hex")
    p.add_argument("--lease", type=positive(int), default=0, metavar="ID",
                   help="the key lives only while lease ID does (`nokv lease grant`)")
    d = kvsub.add_parser("delete", help="delete a key (the store does not say whether it existed)")
    d.add_argument("key", type=key_text, help=keyhelp)
    sc = kvsub.add_parser("scan", help="keys in [START, END) in order")
    sc.add_argument("start", nargs="?", default="", type=key_text, help="first key (default: the start)")
    sc.add_argument("end", nargs="?", default="", type=key_text, help="end key, exclusive (default: the end)")
    sc.add_argument("--limit", type=positive(int), default=100,
                    help="at most this many keys (default %(default)s); the output says when "
                         "more follow")
    cas = kvsub.add_parser("cas", help="compare and swap")
    cas.add_argument("key", type=key_text, help=keyhelp)
    cas.add_argument("expected", type=key_text, help="expected value, or - for absent")
    cas.add_argument("new", type=key_text, help="new value, or - to delete")
    tx = kvsub.add_parser(
        "txn", help="if the compares hold apply --then, else --else, atomically in one region",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=TXN_SYNTAX)
    tx.add_argument("--if", dest="conditions", action="append", default=[], metavar="COMPARE",
                    help="a compare, e.g. 'k == v', 'k exists', 'k mod == 12@1' (repeatable)")
    tx.add_argument("--then", dest="then_ops", action="append", default=[], metavar="OP",
                    help="an operation if every compare holds: 'put k v', 'delete k', 'get k'")
    tx.add_argument("--else", dest="else_ops", action="append", default=[], metavar="OP",
                    help="an operation if some compare does not hold")
    dr = kvsub.add_parser("delete-range", help="delete the keys in [START, END), region by region")
    dr.add_argument("start", type=key_text, help="first key of the range")
    dr.add_argument("end", type=key_text, help='end key, exclusive ("": to the end of the keyspace)')
    dr.add_argument("--limit", type=positive(int), default=None,
                    help="delete at most this many keys; the output says when more remain")
    for q in (g, p, d, sc, cas, tx, dr):
        add_target(q)
        add_json(q)

    wa = sub.add_parser("watch", help="print the changes of a prefix (or of [KEY, --end)) as "
                        "they happen")
    wa.add_argument("key", nargs="?", default="", type=key_text, metavar="PREFIX",
                    help='a key prefix: UTF-8 text, or 0x followed by hex (default "": every key)')
    wa.add_argument("--end", type=key_text, default=None,
                    help="watch the range [PREFIX, END) instead of a prefix (\"\": to the end)")
    wa.add_argument("--count", type=positive(int), default=None,
                    help="stop after this many changes")
    wa.add_argument("--duration", type=positive(float), default=None,
                    help="stop after this many seconds (default: run until Ctrl-C)")
    add_target(wa)
    add_json(wa)

    ls = sub.add_parser("lease", help="leases: keys that live only while kept alive")
    lsub = ls.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    lg = lsub.add_parser("grant", help="a new lease; prints its id")
    lg.add_argument("ttl", type=positive(float), help="seconds it lives without a keep-alive "
                    "(1 to 86400)")
    lk = lsub.add_parser("keep-alive", help="extend lease ID by its TTL (exit status 1 when "
                         "it is gone)")
    lk.add_argument("lease_id", type=positive(int), metavar="ID", help="the lease's id")
    lk.add_argument("--every", type=positive(float), default=None,
                    help="keep it alive every this many seconds until Ctrl-C or --duration")
    lk.add_argument("--duration", type=positive(float), default=None,
                    help="with --every: stop after this many seconds")
    lr = lsub.add_parser("revoke", help="end lease ID now: its keys are deleted")
    lr.add_argument("lease_id", type=positive(int), metavar="ID", help="the lease's id")
    ll = lsub.add_parser("list", help="every lease alive, with its TTL")
    for q in (lg, lk, lr, ll):
        add_target(q)
        add_json(q)

    bk = sub.add_parser("backup", help="write every key of the cluster to one checksummed "
                        "file (each region at one applied index)")
    bk.add_argument("--out", required=True, help="the backup file to write")
    add_target(bk)
    add_json(bk)
    rs = sub.add_parser("restore", help="write a backup into a new cluster in --dir (created "
                        "there when it has none) or into an empty running one")
    rs.add_argument("file", help="a file `nokv backup` wrote")
    rs.add_argument("--stores", type=positive(int), default=None,
                    help="stores of the cluster created to restore into (default 3)")
    rs.add_argument("--wait", type=positive(float), default=60.0,
                    help="seconds to wait for a created cluster to serve (default %(default)g)")
    add_target(rs)
    add_json(rs)

    r = sub.add_parser("route", help="which region holds KEY, with the freshness witness")
    r.add_argument("key", type=key_text, help="a key: UTF-8 text, or 0x followed by hex")
    r.add_argument("--freshness", choices=["strong", "bounded", "best-effort"], default="bounded",
                   help="how fresh the answer must be (default %(default)s); refused, never "
                        "downgraded, when the coordinator cannot vouch for it")
    r.add_argument("--max-root-lag", type=non_negative, default=None,
                   help="with bounded: at most this many rooted events behind")
    r.add_argument("--required-root-token", type=non_negative, default=None,
                   help="the answer must reflect at least this root index")
    add_target(r)
    add_json(r)

    rg = sub.add_parser("regions", help="list regions; `regions digest`: compare replicas")
    rg.add_argument("action", nargs="?", choices=["list", "digest"], default="list",
                    help="list (default): the coordinator's regions; digest: every store's "
                         "digest of each replica's applied data, per region the replicas' "
                         "applied index, key count and digest and whether they agree (exit "
                         "status 1 when replicas at the same applied index differ)")
    add_target(rg)
    add_json(rg)
    st = sub.add_parser("stores", help="list stores")
    add_target(st)
    add_json(st)

    tr = sub.add_parser("transitions", help="topology transitions")
    trsub = tr.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    tl = trsub.add_parser("list", help="every transition the coordinator knows, with its phase")
    ts = trsub.add_parser("show", help="one transition: its entry, recovery records and what "
                                       "every store knows of it")
    ts.add_argument("id", help="transition id (from `transitions list` or an admin reply)")
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
    a = adsub.add_parser("split", help="split the region holding KEY at KEY")
    a.add_argument("key", type=key_text, help="split key (the new right region starts here)")
    a = adsub.add_parser("merge", help="merge region RIGHT into its left neighbour LEFT")
    a.add_argument("left", type=int, help="left region id")
    a.add_argument("right", type=int, help="right region id")
    for name, text in (("add-peer", "add a replica of REGION on STORE"),
                       ("remove-peer", "remove the replica of REGION on STORE"),
                       ("transfer-leader", "move REGION's leadership to its replica on STORE")):
        a = adsub.add_parser(name, help=text)
        a.add_argument("region", type=int, help="region id")
        a.add_argument("store", type=int, help="store id")
    a = adsub.add_parser("tombstone", help="retire a region")
    a.add_argument("region", type=int, help="region id")
    for a in adsub.choices.values():
        add_target(a)
        add_json(a)
        a.set_defaults(timeout=30.0)  # a topology change waits for its transition to apply
        a.add_argument("--no-wait", action="store_true",
                       help="print the store's reply only; do not wait for the end state")
        a.add_argument("--wait-timeout", type=positive(float), default=30.0, metavar="S",
                       help="seconds to wait for the end state (catalog and stores) after the "
                            "reply (default %(default)g); exit status 1 when it is not reached")
    a = adsub.add_parser("retire-store", help="move every replica off STORE, then retire it")
    a.add_argument("store", type=int, help="store id")
    add_target(a)
    add_json(a)
    a.add_argument("--wait", action="store_true",
                   help="print the progress until the store is retired")
    a.add_argument("--wait-timeout", type=positive(float), default=600.0, metavar="S",
                   help="seconds --wait waits (default %(default)g); exit status 1 when the "
                        "store is still draining then")

    fp = sub.add_parser("failpoint", help="failpoints of a running process")
    fpsub = fp.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    f = fpsub.add_parser("set", help="arm a failpoint")
    f.add_argument("process", help="process name (store-1) or address")
    f.add_argument("name", help="a failpoint name (docs/operations.md lists them)")
    f.add_argument("spec", help="off | raise | panic | sleep(MS) | delay(MS) | drop | exit[(CODE)] "
                                "| return[(VALUE)], each with optional N* (times) or P%% "
                                "(probability) prefixes, joined by ->")
    f = fpsub.add_parser("clear", help="disarm one failpoint, or every one")
    f.add_argument("process", help="process name (store-1) or address")
    f.add_argument("name", nargs="?", default="", help="failpoint name (default: every one)")
    f = fpsub.add_parser("list", help="armed failpoints and their hits")
    f.add_argument("process", help="process name (store-1) or address")
    for f in fpsub.choices.values():
        add_target(f)
        add_json(f)

    ob = sub.add_parser("outbox", help="a store's publish outbox: list it, retry or resolve a "
                                       "blocked (TERMINAL_BLOCKED) entry")
    obsub = ob.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    o = obsub.add_parser("list", help="pending and blocked entries of STORE's outbox")
    o.add_argument("store", help="store name (store-2), id (2) or address")
    o = obsub.add_parser("retry", help="move blocked entry SEQ back into the outbox (after its "
                                       "cause was fixed): the store publishes it again")
    o.add_argument("store", help="store name (store-2), id (2) or address")
    o.add_argument("seq", type=positive(int), help="the blocked entry's seq (`outbox list`)")
    o = obsub.add_parser("resolve", help="remove blocked entry SEQ for good; the decision is "
                                         "recorded in root as a recovery record")
    o.add_argument("store", help="store name (store-2), id (2) or address")
    o.add_argument("seq", type=positive(int), help="the blocked entry's seq (`outbox list`)")
    o.add_argument("--as", dest="resolution", required=True, choices=["published", "abandoned"],
                   help="published: root holds the event already (or it was published out of "
                        "band); abandoned: it will never be published from this store")
    o.add_argument("--reason", required=True, help="why (recorded in root with the decision)")
    for o in obsub.choices.values():
        add_target(o)
        add_json(o)

    b = sub.add_parser("bench", help="benchmark a cluster (starts one when none is given)")
    b.add_argument("workload", choices=["puts", "gets", "routes"],
                   help="puts, gets (of 1,000 loaded keys) or routes (BOUNDED route reads)")
    b.add_argument("--clients", type=positive(int), default=16,
                   help="concurrent clients, one request in flight each (default %(default)s)")
    b.add_argument("--duration", type=positive(float), default=10.0,
                   help="seconds of load (default %(default)g)")
    b.add_argument("--regions", type=positive(int), default=1,
                   help="split the bench keyspace into this many regions first (default %(default)s)")
    b.add_argument("--value-size", type=non_negative, default=100,
                   help="bytes per value (default %(default)s)")
    b.add_argument("--dir", default=None,
                   help="bench this local cluster (default: a temporary one, removed afterwards)")
    b.add_argument("--restart-stopped", action="store_true",
                   help="with --dir: start the cluster's processes that are not running "
                        "(otherwise bench refuses)")
    b.add_argument("--coordinator", default=None, type=addresses,
                   help="bench the cluster at these coordinator address(es) host:port[,host:port] "
                        "(with NOKV_CLUSTER_ID and NOKV_CLUSTER_SECRET from the environment)")
    b.add_argument("--timeout", type=positive(float), default=10.0,
                   help="seconds per request (default %(default)g)")
    add_tls(b, client=True)
    add_json(b)

    mt = sub.add_parser("metrics", help="a process's Prometheus metrics, fetched from its "
                                        "metrics endpoint")
    mt.add_argument("name", help="process name, e.g. store-1 (its metrics address is in "
                                 "cluster.json), or an endpoint's host:port")
    add_dir(mt)
    mt.add_argument("--timeout", type=positive(float), default=5.0,
                    help="seconds to wait for the answer (default %(default)g)")
    mt.add_argument("--json", action="store_true",
                    help="the parsed metric families as JSON instead of the text")
    add_top_parser(sub)  # `nokv top`

    dm = sub.add_parser("demo", help="a narrated tour of a local cluster")
    dm.add_argument("--keep", action="store_true", help="leave the cluster running")
    dm.add_argument("--dir", default=None,
                    help="cluster directory (default: a temporary one, removed afterwards)")

    jp = sub.add_parser("jepsen", help="fault injection with a history checker "
                        "(`nokv jepsen --help` is jepsen-lite's own help)", add_help=False)
    jp.add_argument("args", nargs=argparse.REMAINDER,
                    help="jepsen-lite's command and arguments (see `nokv jepsen --help`)")
    return parser


def dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "cluster":
        from nokvpy.cli import cluster_cmd

        return cluster_cmd.run(args)
    if cmd == "metaroot" and args.action != "serve":
        from nokvpy.cli import metaroot_cmd

        return metaroot_cmd.run(args)
    if cmd in SERVE_KINDS:
        from nokvpy.cli import serve_cmd

        return serve_cmd.run(args)
    use_tls(getattr(args, "tls", None))  # --coordinator with --tls-* (or NOKV_TLS_*)
    if cmd == "bench":
        from nokvpy.cli import bench_cmd

        return bench_cmd.run(args)
    if cmd == "demo":
        from nokvpy.cli import demo_cmd

        return demo_cmd.run(args)
    if cmd == "jepsen":
        return run_jepsen(args.args)
    if cmd == "outbox":
        from nokvpy.cli import outbox_cmd

        return outbox_cmd.run(args)
    if cmd == "metrics":
        from nokvpy.cli import metrics_cmd

        return metrics_cmd.run(args)
    if cmd == "top":
        from nokvpy.cli import top_cmd

        return top_cmd.run(args)
    if cmd == "lease":
        from nokvpy.cli import lease_cmd

        return lease_cmd.run(args)
    if cmd in ("backup", "restore"):
        from nokvpy.cli import backup_cmd

        return backup_cmd.run(args)
    if cmd == "watch":
        from nokvpy.cli import watch_cmd

        return watch_cmd.run(args)
    if cmd == "regions" and args.action == "digest":
        from nokvpy.cli import digest_cmd

        return digest_cmd.run(args)
    if cmd == "admin" and args.action == "retire-store":
        from nokvpy.cli import membership_cmd

        return membership_cmd.run(args)
    from nokvpy.cli import data_cmd

    return data_cmd.run(args)


def run_jepsen(argv: list[str]) -> int:
    try:
        import jepsen_lite.cli as jepsen_cli
    except ImportError:  # not installed (`pip install -e .`): use the source tree
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jepsen-lite"))
        import jepsen_lite.cli as jepsen_cli

    build = jepsen_cli.build_parser

    def build_as_nokv_jepsen() -> argparse.ArgumentParser:  # `usage: nokv jepsen run ...`
        parser = build()
        rename_prog(parser, parser.prog, "nokv jepsen")
        return parser

    jepsen_cli.build_parser = build_as_nokv_jepsen
    try:
        return jepsen_cli.main(argv)
    finally:
        jepsen_cli.build_parser = build


def rename_prog(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Replace the leading `old` of the program name of `parser` and its subcommands."""
    if parser.prog.startswith(old):
        parser.prog = new + parser.prog[len(old):]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            prefix = action._prog_prefix
            if prefix.startswith(old):
                action._prog_prefix = new + prefix[len(old):]
            for sub in action.choices.values():
                rename_prog(sub, old, new)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["jepsen"]:  # everything after `jepsen`, --help included, is jepsen-lite's
            return run_jepsen(argv[1:])
        parser = build_parser()
        if argv[:2] == ["config", "show"]:  # the flags it does not know are serve flags
            from nokvpy.cli import configfile

            args, serve_argv = parser.parse_known_args(argv)
            return configfile.show(parser, args, serve_argv)
        if argv[1:2] == ["serve"]:
            from nokvpy.cli import configfile  # --config, required flags, --advertise-addr

            configfile.relax_required(parser, argv)
        args = parser.parse_args(argv)
        if args.command in SERVE_KINDS and args.action == "serve":
            from nokvpy.cli import configfile

            configfile.resolve(parser, args, argv[2:])
        tls_flags(parser, args)
        return dispatch(args)
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
    """One line for a failure: the message of an expected error, else `Type: message`; no
    Python reprs (a remote error's details dict, byte strings, enum members)."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return describe(exc.exceptions[0])
    from nokvpy.cli.output import readable
    from nokvpy.rpc import RemoteError

    text = remote_text(exc) if isinstance(exc, RemoteError) else str(exc).strip()
    text = readable(text.splitlines()[0]) if text else ""
    name = type(exc).__name__
    known = ("CliError", "ClusterError")
    return text if name in known and text else f"{name}: {text}" if text else name


if __name__ == "__main__":
    sys.exit(main())
