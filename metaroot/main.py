"""`nokv metaroot serve`: one metaroot peer process.

Owns: wiring the peer together (LMDB environment, raft log, ready-loop driver, raft transport,
RPC server) under one trio root nursery, the start-up checks (cluster stamp, membership) and
graceful shutdown on SIGTERM / SIGINT. Never holds protocol logic (metaroot.service does).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import trio

from metaroot import rootlog
from metaroot.service import GROUP_ID, MetarootService
from nokvpy import failpoints
from nokvpy.replication.transport import bind_transport
from nokvpy.rpc import FaultRules, Identity, RpcClient, RpcServer
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
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    if not peers:
        peers = {node_id: listen}
    if node_id not in peers:
        raise StartupError(f"--id {node_id} is not in the peer list {sorted(peers)}")
    if len(peers) not in (1, 3, 5):
        raise StartupError(f"metaroot needs 1, 3 or 5 peers, got {len(peers)}")
    if retained_tail < 1:
        raise StartupError(f"--retained-tail must be >= 1, got {retained_tail}")
    env = Env.open(data, dbs=RAFT_DBS + rootlog.ROOT_DBS)
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
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
            await nursery.start(driver.run)
            host, port = split_addr(listen)
            await nursery.start(server.serve, host, port)
            log.info("metaroot-%d serving on %s (cluster %s, peers %s)", node_id, listen,
                     cluster_id, sorted(peers))
            task_status.started(service)
            if len(peers) == 1:
                driver.campaign(service.group)
            await wait_for_shutdown()
            nursery.cancel_scope.cancel()
        await rpc.aclose()
    finally:
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
        trio.run(serve, args.id, args.listen, args.cluster_id, peers, args.data, args.retained_tail)
    except StartupError as exc:
        print(f"nokv metaroot: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
