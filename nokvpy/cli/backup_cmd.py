"""`nokv backup --out FILE` and `nokv restore FILE --dir DIR`.

Owns: the two commands' arguments, progress (stderr) and output (a summary, or `--json`).
`restore` into a directory without a cluster creates one there first (`nokv cluster up`'s
defaults, `--stores`), then splits it at the backup's region boundaries and writes every
pair back (nokvpy.client.backup); into a running cluster only when it holds no key. Every
failure is one line; a damaged file is refused before anything is created or written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from nokvpy.cli.common import CliError
from nokvpy.cli.data_cmd import Target, run_handler
from nokvpy.cli.output import print_json
from nokvpy.client import Client
from nokvpy.client.backup import BackupFormatError, BackupSummary, backup, read_backup, restore
from nokvpy.cluster.local import LocalCluster
from nokvpy.protocol import Freshness
from nokvpy.protocol.store_rpc import AdminRequest


def run(args) -> int:
    if args.command == "backup":
        return run_handler(args, cmd_backup)
    try:
        read_backup(args.file)  # refuse a damaged file before creating anything
    except (BackupFormatError, OSError) as exc:
        raise CliError(str(exc)) from None
    cluster = LocalCluster(Path(args.dir))
    if args.coordinator is None and not cluster.exists():
        from nokvpy.cli import cluster_cmd

        stores = args.stores or 3
        up = argparse.Namespace(dir=args.dir, metaroot=None, coordinators=None,
                                stores=stores, replication=min(3, stores), tls=False,
                                wait=args.wait, json=True)
        _say(args, f"creating a cluster in {args.dir} to restore into")
        status = _quiet(cluster_cmd.up, cluster, up)  # its output is not this command's
        if status:
            return status
    return run_handler(args, cmd_restore)


def _quiet(fn, *a):
    """Run `fn(*a)` with its stdout (the table `cluster up` prints) sent to stderr."""
    stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        return fn(*a)
    finally:
        sys.stdout = stdout


def _say(args, text: str) -> None:
    if not args.json:
        print(text, file=sys.stderr, flush=True)


async def cmd_backup(args, target: Target, client: Client) -> int:
    summary = await backup(client, args.out, progress=lambda t: _say(args, t))
    _done(args, summary, "backed up")
    return 0


async def cmd_restore(args, target: Target, client: Client) -> int:
    async def split(key: bytes) -> None:
        await _split(client, key)

    summary = await restore(client, args.file, split=split, progress=lambda t: _say(args, t))
    _done(args, summary, "restored")
    return 0


async def _split(client: Client, key: bytes, attempts: int = 100) -> None:
    """Split the region holding `key` at `key` (through its leader; retried while leaders
    move), unless a region already starts there."""
    last = ""
    for _ in range(attempts):
        route = await client.route(key, Freshness.STRONG)
        d = route.descriptor
        if d.start_key == key:
            return
        try:
            addr = await client._store_addr(route.leader_store_id)
            await client.rpc.call(addr, AdminRequest("split", d.region_id, split_key=key),
                                  timeout=30.0)
        except Exception as exc:  # noqa: BLE001 - leader moving; try again
            last = str(exc)
            await trio.sleep(0.2)
    raise CliError(f"could not split at {key!r}: {last}")


def _done(args, s: BackupSummary, verb: str) -> None:
    body = {"path": s.path, "regions": s.regions, "keys": s.keys, "bytes": s.bytes,
            "cluster_id": s.cluster_id, "root_index": s.root_index}
    if args.json:
        print_json(body)
    else:
        print(f"{verb} {s.keys} keys ({s.bytes} bytes) in {s.regions} regions: {s.path}")
