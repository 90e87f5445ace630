"""`nokv metaroot serve`: one metaroot peer process.

Owns: wiring the peer together (LMDB environment, raft log, ready-loop driver, raft transport,
RPC server, the metrics endpoint of `--metrics-addr` with its collectors, metaroot.metrics,
the removal probe of metaroot.reconfig) under one trio root nursery, the start-up checks
(cluster stamp, the founding or joining peer list of a fresh data dir, a removed peer, a
metrics address it cannot listen on) and graceful shutdown on SIGTERM / SIGINT. A data dir's
membership is its own (metaroot.members): `--peer` only seeds a fresh one. Never holds
protocol logic (metaroot.service does).

A peer binds `--listen` (a wildcard such as 0.0.0.0 is fine); the address others dial is its
entry in the membership: its `--peer ID=HOST:PORT` entry, or `--advertise-addr` when it
founds a group alone without `--peer` (nokvpy.cli.configfile checks the two agree).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys

import trio

from metaroot import members as members_mod
from metaroot import metrics as metaroot_metrics
from metaroot import reconfig, rootlog
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
    return host.strip("[]") or "127.0.0.1", int(port)


def check_fresh_peers(node_id: int, peers: dict[int, str], join: bool) -> None:
    """The --peer list of a fresh data dir: the founders (1, 3 or 5 of them, this one
    included), or for --join the current members and this new peer."""
    if node_id not in peers:
        raise StartupError(f"--id {node_id} is not in the peer list {sorted(peers)}")
    if join and len(peers) < 2:
        raise StartupError("--join needs the current metaroot peers as --peer (and this one)")
    if not join and len(peers) not in (1, 3, 5):
        raise StartupError(f"metaroot needs 1, 3 or 5 peers, got {len(peers)}")


async def serve(node_id: int, listen: str, cluster_id: str, peers: dict[int, str], data: str,
                retained_tail: int = 4096, tick_interval: float = 0.1,
                metrics_addr: str | None = None, join: bool = False,
                advertise: str | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run one metaroot peer until SIGTERM / SIGINT; `task_status.started(service)` once it
    serves. `metrics_addr` (host:port): serve Prometheus metrics there.

    `peers` seeds a fresh data dir only: the founding members (bootstrapped), or with `join`
    the current members' addresses (this peer then starts empty and waits to be added as a
    learner, metaroot.members). An existing data dir serves with its own durable membership,
    whatever `peers` says, and a removed peer refuses to start. Without `peers`, a fresh
    data dir founds a one-peer group at `advertise` (default `listen`)."""
    if not peers:
        peers = {node_id: advertise or listen}
    if retained_tail < 1:
        raise StartupError(f"--retained-tail must be >= 1, got {retained_tail}")
    if not os.path.isdir(data) or not os.listdir(data):
        check_fresh_peers(node_id, peers, join)  # before anything is created
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
        members = startup_members(env, node_id, cluster_id, peers, join)
        secret = os.environ.get("NOKV_CLUSTER_SECRET", "").encode() or None
        identity = Identity(cluster_id, "metaroot", node_id, secret)
        faults = FaultRules()  # shared: a partition set through the admin call cuts both ways
        rpc = RpcClient(identity, faults=faults)
        server = RpcServer(identity, faults=faults)
        raftlog = RaftLogStore(env)
        storage = raftlog.group(GROUP_ID)
        fresh = storage.last_index() == 0
        if members is None:  # a data dir written before the membership record
            members = members_mod.load(env, storage.initial_state()[1])
        book = dict(members.addrs)  # shared by the transport and the service (in place)
        transport, driver = bind_transport(rpc, server, env, raftlog, node_id,
                                           resolve=book.get, tick_interval=tick_interval)
        service = MetarootService(node_id, cluster_id, book, env, driver, raftlog, retained_tail,
                                  members)
        if fresh and members.voters and not members.conf_index:
            # a founder (a joining peer's record has no voters: it is added, never founds)
            service.group.node.bootstrap(sorted(members.voters))
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
            nursery.start_soon(reconfig.retire_when_removed, service)
            nursery.start_soon(reconfig.probe_removal, service, rpc)
            m = service.sm.members
            log.info("metaroot-%d serving on %s, advertised as %s (cluster %s, voters %s, "
                     "learners %s%s)", node_id, listen, book.get(node_id, "(not a member)"),
                     cluster_id, list(m.voters), list(m.learners),
                     "; joining: waiting to be added" if not m.is_member(node_id) else "")
            task_status.started(service)
            if m.voters == (node_id,):
                driver.campaign(service.group)
            await wait_for_shutdown()
            nursery.cancel_scope.cancel()
        await rpc.aclose()
    finally:
        if metrics is not None:
            await metrics.aclose()
        env.close()


def startup_members(env: Env, node_id: int, cluster_id: str, peers: dict[int, str],
                    join: bool) -> members_mod.Members | None:
    """Stamp a fresh data dir (its first membership record from `peers`), or check an
    existing one: its cluster, and that this peer was not removed. The membership of an
    existing data dir (None: one written before the record) is its own."""
    fresh = env.get(rootlog.ROOT_META, b"cluster_id") is None
    if fresh:
        check_fresh_peers(node_id, peers, join)
        members = (members_mod.Members.joining(peers) if join
                   else members_mod.Members.founding(peers))
    try:
        if rootlog.stamp(env, cluster_id, members.to_json() if fresh else ""):
            return members
    except rootlog.StampError as exc:
        raise StartupError(str(exc)) from None
    if env.get(rootlog.ROOT_META, members_mod.MEMBERS_KEY) is None:
        return None
    members = members_mod.load(env)
    removed = members_mod.removed_reason(env, node_id, members)
    if removed:
        raise StartupError(f"{removed}; it may not serve again (its data dir "
                           f"{env.path} is retired: delete it, or start a new peer with "
                           "`nokv metaroot add-peer`)")
    if sorted(peers) != sorted(members.ids()) and len(peers) > 1:
        log.info("metaroot-%d: --peer %s ignored: this data dir's membership is voters %s, "
                 "learners %s (raft index %d)", node_id, sorted(peers), list(members.voters),
                 list(members.learners), members.conf_index)
    return members


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
                                   metrics_addr=getattr(args, "metrics_addr", None),
                                   join=bool(getattr(args, "join", False)),
                                   advertise=getattr(args, "advertise_addr", None)))
    except StartupError as exc:
        print(f"nokv metaroot: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
