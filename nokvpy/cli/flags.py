"""The flags many `nokv` commands share: where a command goes (`--dir`, `--coordinator`,
`--timeout`, the `--tls-*` files and their checks), `--json`, and the `nokv kv txn` phrase
syntax its help shows. Never parses a command on its own (nokvpy.cli.main does).
"""

from __future__ import annotations

import argparse
import os

from nokvpy.cli.argtypes import addresses, positive

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
    serve = args.command in ("metaroot", "coordinator", "store")
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
