"""The flags many `nokv` commands share: where a command goes (`--dir`, `--coordinator`,
`--timeout`, the `--tls-*` files and their checks), `--json`, the flags of the three serve
commands (`add_serve_flags`, with `SERVE_REQUIRED` and `SERVE_ENV`) and the `nokv kv txn`
phrase syntax its help shows. Never parses a command on its own (nokvpy.cli.main does; the
serve commands' `--config` file and required flags are nokvpy.cli.configfile's).
"""

from __future__ import annotations

import argparse
import os

from nokvpy.cli.argtypes import (
    addresses,
    advertise_address,
    metrics_address,
    non_negative,
    peer_entry,
    positive,
)

DEFAULT_DIR = os.environ.get("NOKV_DIR", "./nokv-cluster")


def add_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=DEFAULT_DIR,
                   help="local cluster directory (default %(default)s; NOKV_DIR changes it)")


def add_target(p: argparse.ArgumentParser) -> None:
    add_dir(p)
    p.add_argument("--coordinator", default=None, type=addresses,
                   help="coordinator address(es) host:port[,host:port] instead of --dir "
                        "(with NOKV_CLUSTER_ID and NOKV_CLUSTER_SECRET from the environment)")
    p.add_argument("--timeout", type=positive(float), default=10.0,
                   help="seconds per request (default %(default)g)")
    add_tls(p, client=True)


TLS_FILES = ("cert", "key", "ca")
TLS_HELP = {"cert": "PEM certificate this process presents (server and client side)",
            "key": "PEM private key of --tls-cert",
            "ca": "PEM CA every peer's certificate must be signed by"}


def add_tls(p: argparse.ArgumentParser, client: bool) -> None:
    """--tls-cert, --tls-key, --tls-ca: all three or none (checked by `tls_flags`)."""
    for name in TLS_FILES:
        text = TLS_HELP[name]
        if client:
            text = (f"with --coordinator: {text} (default NOKV_TLS_{name.upper()}; a --dir "
                    "cluster's TLS files are in its cluster.json)")
        p.add_argument(f"--tls-{name}", default=None, metavar="FILE", help=text)


def tls_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the --tls-* flags and set `args.tls`: {"cert", "key", "ca"} or None. A client
    command takes them (or NOKV_TLS_CERT, _KEY, _CA) with --coordinator only."""
    if not hasattr(args, "tls_ca"):
        return
    given = {k: getattr(args, f"tls_{k}") for k in TLS_FILES if getattr(args, f"tls_{k}")}
    serve = args.command in SERVE_KINDS
    if not serve:
        if given and not args.coordinator:
            parser.error("--tls-cert, --tls-key and --tls-ca go with --coordinator (a --dir "
                         "cluster's TLS files are in its cluster.json)")
        if args.coordinator:
            for k in TLS_FILES:
                given.setdefault(k, os.environ.get(f"NOKV_TLS_{k.upper()}", ""))
            given = {k: v for k, v in given.items() if v}
    if given and len(given) < len(TLS_FILES):
        missing = ", ".join(f"--tls-{k}" for k in TLS_FILES if k not in given)
        parser.error(f"--tls-cert, --tls-key and --tls-ca go together (missing {missing})")
    args.tls = given or None


SERVE_KINDS = ("metaroot", "coordinator", "store")
# Flags a serve command needs, given on the command line or in its --config file (argparse
# requires them of a command line without --config; with one, nokvpy.cli.configfile checks
# them once the file is read)
SERVE_REQUIRED = {"metaroot": ("id", "listen", "data"),
                  "coordinator": ("id", "listen", "metaroot"),
                  "store": ("id", "listen", "coordinator", "data")}
# Serve flags whose default comes from the environment (below a flag and the config file)
SERVE_ENV = {"cluster_id": "NOKV_CLUSTER_ID", "log_level": "NOKV_LOG_LEVEL",
             "log_format": "NOKV_LOG_FORMAT", "scheduler": "NOKV_SCHEDULER"}
NEEDED = " (required, here or in the --config file)"


def add_serve_flags(s: argparse.ArgumentParser, kind: str) -> None:
    """The flags of `nokv KIND serve` (KIND: metaroot, coordinator or store)."""
    s.add_argument("--config", default=None, metavar="FILE",
                   help="a TOML file of serve flags: top-level keys for every kind, "
                        f"[{kind}] keys for this one (a flag given here overrides the file; "
                        "`nokv config show` prints the result)")
    s.add_argument("--id", type=int, required=True, help=f"this {kind}'s id (1, 2, ...)" + NEEDED)
    s.add_argument("--listen", required=True, help="host:port to listen on" + NEEDED)
    s.add_argument("--advertise-addr", type=advertise_address, default=None, metavar="HOST:PORT",
                   help="host:port other processes and clients dial to reach this one (default: "
                        "the --listen address, which then may not be a wildcard such as "
                        "0.0.0.0" + (", or this peer's --peer entry" if kind == "metaroot" else "")
                        + ")")
    s.add_argument("--cluster-id", default=os.environ.get("NOKV_CLUSTER_ID", "nokv"),
                   help="cluster id every process of the cluster shares "
                        "(default NOKV_CLUSTER_ID, else nokv)")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   default=os.environ.get("NOKV_LOG_LEVEL", "info"),
                   help="least severe log events written (default info, or NOKV_LOG_LEVEL)")
    s.add_argument("--log-format", choices=["text", "json"],
                   default=os.environ.get("NOKV_LOG_FORMAT", "text"),
                   help="text lines, or one JSON object per line with ts, level, "
                        "process, logger, msg (default text, or NOKV_LOG_FORMAT)")
    s.add_argument("--enable-failpoints", action="store_true",
                   help="accept failpoint and fault-rule requests from the admin role "
                        "(testing only; off by default; `nokv cluster up` passes it)")
    add_tls(s, client=False)
    s.add_argument("--metrics-addr", type=metrics_address, default=None, metavar="HOST:PORT",
                   help="serve Prometheus metrics over plain HTTP at "
                        "http://HOST:PORT/metrics (off when not given; no wildcard "
                        "address: the endpoint has no authentication)")
    if kind == "metaroot":
        s.add_argument("--peer", action="append", type=peer_entry, default=[],
                       help="id=host:port of every metaroot peer, this one included (repeat)")
        s.add_argument("--data", required=True, help="data directory (created if missing)" + NEEDED)
        s.add_argument("--retained-tail", type=int, default=4096,
                       help="rooted events kept after the checkpoint (default %(default)s)")
        s.add_argument("--join", action="store_true", help="a fresh data dir joins a "
                       "running group (`nokv metaroot add-peer`) instead of founding one")
    elif kind == "coordinator":
        s.add_argument("--metaroot", type=addresses, required=True,
                       help="metaroot addresses, comma separated" + NEEDED)
        s.add_argument("--replication", type=int, default=3,
                       help="replicas per region (default %(default)s)")
        s.add_argument("--grant-ttl", type=float, default=6.0,
                       help="seconds an authority grant lasts (default %(default)g)")
        s.add_argument("--staleness-window", type=float, default=3.0,
                       help="seconds without hearing from metaroot before routes count as "
                            "possibly stale (default %(default)g)")
        s.add_argument("--scheduler", default=None,
                       help="scheduler options, e.g. split_keys=1000,repair_after=30,"
                            "merge_keys=0,stuck_after=15 (also NOKV_SCHEDULER)")
    else:
        s.add_argument("--coordinator", type=addresses, required=True,
                       help="coordinator addresses, comma separated" + NEEDED)
        s.add_argument("--data", required=True, help="data directory (created if missing)" + NEEDED)
        s.add_argument("--tick-ms", type=int, default=100,
                       help="raft tick in milliseconds (default %(default)s)")
        s.add_argument("--watch-keep", type=non_negative, default=4096,
                       help="raft indexes of changes each region keeps for watches "
                            "(default %(default)s; 0: keep none, watches are refused)")
        s.add_argument("--hibernate-ticks", type=non_negative, default=20,
                       help="ticks a region must be idle before it stops ticking (it wakes on "
                            "any message or request; default %(default)s; 0: never)")


TXN_SYNTAX = """\
compares (--if; all must hold, and with none the --then branch runs):
  'KEY == VALUE'          KEY exists and has VALUE
  'KEY != VALUE'          KEY is missing or has another value
  'KEY exists'            KEY exists
  'KEY missing'           KEY does not exist
  'KEY mod == INDEX@R'    KEY was last written by raft entry INDEX of region R (as a
                          --then 'get KEY' prints it); 'KEY mod == 0': KEY is missing;
                          without @R only the index is compared; also !=
operations (--then when every compare holds, else --else; applied in order):
  'put KEY VALUE'   'delete KEY'   'get KEY'
KEY and VALUE are UTF-8 text or 0x followed by hex; quote one that holds spaces, as in
--then 'put k "a b"'. Every key must lie in one region. The compares are read when the
transaction applies. Exit status 1 when the --else branch ran.
example:
  nokv kv txn --if 'lock missing' --then 'put lock me' --then 'get lock' --else 'get lock'"""


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


TOP_INTERVAL = 2.0  # `nokv top`: seconds between frames
TOP_TIMEOUT = 1.0  # seconds a process has to answer one sample


def add_top_parser(sub) -> None:
    """`nokv top` under the subcommands `sub` of `nokv` (nokvpy.cli.top_cmd runs it;
    its flags are here so that parsing any command does not import it)."""
    tp = sub.add_parser(
        "top", help="the live figures of every process of a local cluster (CPU, RPC, fsync, "
                    "WAL and apply rates, role), redrawn every interval until Ctrl-C",
        description="Every interval, the metrics of every process of the cluster in --dir, "
                    "one row each. ROLE: a store's regions and leaders; a metaroot peer's "
                    "leader or follower and term; a coordinator's grants held of its duties, "
                    "catch-up state and root lag; `down: ...` for one that did not answer. "
                    "CPU%, RPC/s (requests), ERR/s (request errors), SYNC/s (fsyncs), SYNC_MS "
                    "(mean fsync time), WAL_MB/s and APPLY/s (raft entries applied, all "
                    "replicas) are rates over the interval, '-' when unknown (a restart in "
                    "between); MAXRSS is the peak resident memory, MB.")
    add_dir(tp)
    tp.add_argument("--interval", type=positive(float), default=TOP_INTERVAL, metavar="S",
                    help="seconds between frames (default %(default)g); rates are the change "
                         "over one interval, so the first frame comes one interval after the "
                         "first sample")
    tp.add_argument("--count", type=positive(int), default=None, metavar="N",
                    help="stop after N frames (default: until Ctrl-C)")
    tp.add_argument("--timeout", type=positive(float), default=TOP_TIMEOUT, metavar="S",
                    help="seconds each process has to answer a sample (default %(default)g); "
                         "one that does not is shown as down")
    tp.add_argument("--json", action="store_true",
                    help="one JSON object per frame, one per line: {\"time\", \"cluster\", "
                         "\"interval\", \"processes\": [rows of numbers]}")
