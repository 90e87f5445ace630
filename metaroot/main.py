"""`nokv metaroot serve`: one metaroot peer process.

Owns: wiring the peer together (LMDB environment, raft log, ready-loop driver, raft transport,
RPC server, the metrics endpoint of `--metrics-addr` with its collectors, metaroot.metrics)
under one trio root nursery, the start-up checks (cluster stamp, membership, a metrics
address it cannot listen on) and graceful shutdown on SIGTERM / SIGINT. Never holds
protocol logic (metaroot.service does).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys

import trio

from metaroot import metrics as metaroot_metrics
from metaroot import rootlog
from metaroot.service import GROUP_ID, MetarootService
from nokvpy import failpoints
from nokvpy.replication.transport import bind_transport
from nokvpy.rpc import FaultRules, Identity, RpcClient, RpcServer
from nokvpy.rpc.metrics_http import (
    MetricsAddressError,
    open_metrics,
    process_collector,
    rpc_collector,
)
from nokvpy.storage import Env, RaftLogStore
from nokvpy.storage.schema import RAFT_DBS

log = logging.getLogger("nokvpy.metaroot")


class StartupError(Exception):
    """A refusal to start, printed as one line."""


def parse_peers(peers: list[str]) -> dict[int, str]:
    out: dict[int, str] = {}
    for p in peers:
        ident, sep, addr = p.partition("=")
        if not sep or not ident.isdigit() or ":" not in addr:
            raise StartupError(f"bad --peer {p!r}: expected ID=HOST:PORT")
        out[int(ident)] = addr
    return out


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


async def serve(node_id: int, listen: str, cluster_id: str, peers: dict[int, str], data: str,
                retained_tail: int = 4096, tick_interval: float = 0.1,
                metrics_addr: str | None = None,
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run one metaroot peer until SIGTERM / SIGINT; `task_status.started(service)` once it
    serves. `metrics_addr` (host:port): serve Prometheus metrics there."""
    if not peers:
        peers = {node_id: listen}
    if node_id not in peers:
        raise StartupError(f"--id {node_id} is not in the peer list {sorted(peers)}")
    if len(peers) not in (1, 3, 5):
        raise StartupError(f"metaroot needs 1, 3 or 5 peers, got {len(peers)}")
    if retained_tail < 1:
        raise StartupError(f"--retained-tail must be >= 1, got {retained_tail}")
    try:  # bound before anything is opened: a refusal writes nothing
        metrics = await open_metrics(metrics_addr, f"metaroot-{node_id}",
                                     [process_collector("metaroot", node_id, cluster_id)])
    except MetricsAddressError as exc:
        raise StartupError(str(exc)) from None
    try:
        env = Env.open(data, dbs=RAFT_DBS + rootlog.ROOT_DBS)
    except BaseException:
        if metrics is not None:
            await metrics.aclose()
        raise
    try:
        try:
            rootlog.stamp(env, cluster_id, peers)
        except rootlog.StampError as exc:
            raise StartupError(str(exc)) from None
        secret = os.environ.get("NOKV_CLUSTER_SECRET", "").encode() or None
        identity = Identity(cluster_id, "metaroot", node_id, secret)
        faults = FaultRules()  # shared: a partition set through the admin call cuts both ways
        rpc = RpcClient(identity, faults=faults)
        server = RpcServer(identity, faults=faults)
        raftlog = RaftLogStore(env)
        fresh = raftlog.group(GROUP_ID).last_index() == 0
        transport, driver = bind_transport(rpc, server, env, raftlog, node_id,
                                           resolve=peers.get, tick_interval=tick_interval)
        service = MetarootService(node_id, cluster_id, peers, env, driver, raftlog, retained_tail)
        if fresh:
            service.group.node.bootstrap(sorted(peers))
        service.register(server)
        if metrics is not None:
            metrics.add(rpc_collector(server, rpc),
                        metaroot_metrics.collector(service, driver, transport, env, raftlog))
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
            await nursery.start(driver.run)
            host, port = split_addr(listen)
            await nursery.start(server.serve, host, port)
            if metrics is not None:
                await nursery.start(metrics.serve)
            log.info("metaroot-%d serving on %s (cluster %s, peers %s)", node_id, listen,
                     cluster_id, sorted(peers))
            task_status.started(service)
            if len(peers) == 1:
                driver.campaign(service.group)
            await wait_for_shutdown()
            nursery.cancel_scope.cancel()
        await rpc.aclose()
    finally:
        if metrics is not None:
            await metrics.aclose()
        env.close()


async def wait_for_shutdown() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    failpoints.load_from_env()
    try:
        peers = parse_peers(args.peer)
        trio.run(functools.partial(serve, args.id, args.listen, args.cluster_id, peers, args.data,
                                   args.retained_tail,
                                   metrics_addr=getattr(args, "metrics_addr", None)))
    except StartupError as exc:
        print(f"nokv metaroot: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
