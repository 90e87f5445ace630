"""`nokv admin retire-store STORE [--wait] [--json]`.

Owns: asking a coordinator to retire a store (RetireStore: the first call starts draining it,
every call answers the progress) and, with `--wait`, asking again until the store is retired,
printing each change of progress (stderr) and the end state (stdout); in a local cluster
(--dir) a retired store's process is then stopped and recorded retired in cluster.json
(`LocalCluster.retire`: never started again). Exit status 1 when
`--wait` gives up while the store still drains. Never decides anything itself: the
coordinator refuses a retirement that would leave too few live stores, and its scheduler
moves the replicas (docs/operations.md "Retiring a store").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio

from nokvpy.cli.common import CliError, one_line_errors
from nokvpy.cli.output import Progress, print_json
from nokvpy.client import Client
from nokvpy.cluster.local import ClusterError, LocalCluster
from nokvpy.protocol.coordinator_rpc import RetireStoreReply, RetireStoreRequest

POLL = 1.0  # seconds between progress requests with --wait


def local_cluster(args) -> LocalCluster | None:
    """The local cluster of --dir (None with --coordinator)."""
    if args.coordinator:
        return None
    return LocalCluster(Path(args.dir))


def stop_retired(args, store_id: int) -> str | None:
    """In a local cluster, record store `store_id` retired in cluster.json and stop its
    process (it must never start again); returns its name (None: not a local store, or
    recorded already)."""
    cluster = local_cluster(args)
    if cluster is None:
        return None
    try:
        spec = cluster.load()
    except ClusterError:
        return None
    proc = next((p for p in spec.of_kind("store") if p.node_id == store_id), None)
    if proc is None or proc.retired:
        return None
    cluster.retire(spec, proc.name)
    return proc.name


def admin_client(args) -> Client:
    """An admin-role client of the cluster in --dir, or of --coordinator (with
    NOKV_CLUSTER_ID and NOKV_CLUSTER_SECRET from the environment)."""
    if args.coordinator:
        coordinators = [a.strip() for a in args.coordinator.split(",") if a.strip()]
        cluster_id = os.environ.get("NOKV_CLUSTER_ID", "nokv")
        secret = os.environ.get("NOKV_CLUSTER_SECRET", "")
    else:
        cluster = LocalCluster(Path(args.dir))
        try:
            spec = cluster.load()
        except ClusterError as exc:
            hint = "" if cluster.exists() else " (or pass --coordinator HOST:PORT)"
            raise CliError(f"{exc}{hint}") from None
        coordinators, cluster_id, secret = spec.coordinator_addrs(), spec.cluster_id, spec.secret
    return Client(coordinators, cluster_id=cluster_id, secret=secret.encode() or None,
                  timeout=args.timeout, role="admin")


def reply_plain(reply: RetireStoreReply) -> dict[str, Any]:
    return {"store_id": reply.store_id, "state": reply.state,
            "replicas_left": reply.replicas_left, "region_ids": list(reply.region_ids),
            "pending": list(reply.pending), "retired_index": reply.retired_index,
            "detail": reply.detail}


def reply_line(reply: RetireStoreReply) -> str:
    if reply.state == "retired":
        return f"store {reply.store_id}: retired (root index {reply.retired_index})"
    regions = ", ".join(str(r) for r in reply.region_ids[:8])
    more = "..." if len(reply.region_ids) > 8 else ""
    line = f"store {reply.store_id}: draining, {reply.replicas_left} replica(s) left"
    if regions:
        line += f" (regions {regions}{more})"
    if reply.pending:
        line += f", {len(reply.pending)} pending transition(s)"
    if reply.replicas_left == 0 and reply.detail:
        line += f": {reply.detail}"
    return line


async def retire(client: Client, store_id: int, wait: bool, timeout: float,
                 progress: Progress | None = None) -> RetireStoreReply:
    """Ask until retired (`wait`) or once; returns the last reply."""
    deadline = trio.current_time() + timeout
    while True:
        reply = await client.call_coordinator(RetireStoreRequest(store_id))
        if progress is not None:
            progress.update(reply_line(reply))
        if not wait or reply.state == "retired" or trio.current_time() >= deadline:
            return reply
        await trio.sleep(POLL)


def run(args) -> int:
    return trio.run(_run, args)


async def _run(args) -> int:
    client = admin_client(args)
    progress = Progress("retire-store", enabled=args.wait and not args.json)
    try:
        with one_line_errors():
            reply = await retire(client, args.store, args.wait, args.wait_timeout, progress)
    finally:
        await client.aclose()
    stopped = stop_retired(args, args.store) if reply.state == "retired" else None
    if args.json:
        print_json({**reply_plain(reply), "stopped": stopped})
    else:
        print(reply_line(reply))
        if stopped:
            print(f"{stopped}: stopped; cluster.json records it retired (never started again)")
    if args.wait and reply.state != "retired":
        raise CliError(f"store {args.store} still draining after {args.wait_timeout:g}s "
                       f"({reply.replicas_left} replica(s) left); run the command again to "
                       "follow it")
    return 0
