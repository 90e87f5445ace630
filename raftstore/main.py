"""`nokv store serve`: one store process.

Owns: wiring a store together under one trio root nursery (LMDB environment, localmeta
restart derivation, identity stamp, RPC server and client, the `Store` with its driver and
raft transport, the join/heartbeat loop, failpoint admin, the metrics endpoint of
`--metrics-addr` with its collectors (raftstore.metrics)), the start-up refusals (corrupt
localmeta, identity mismatch, a metrics address it cannot listen on: one line, exit
non-zero, nothing written) and graceful shutdown on SIGTERM / SIGINT. Never holds
execution logic (raftstore.store does).

Static flags give addresses (`--listen` to bind, `--advertise-addr` to register with the
coordinator and hand to peers and clients, default the listen address; `--coordinator`) and
seed a fresh data directory with its identity (`--id`, `--cluster-id`); what the store hosts
after a restart comes from localmeta only. `NOKV_QUEUE_LIMIT=N` in the environment sets the
per-region proposal queue limit (default 4096; writes beyond it wait for a slot, see
raftstore.kvpath).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import signal
import sys
from typing import Any

import trio

from nokvpy import failpoints
from nokvpy.adminsvc import register_failpoint_admin
from nokvpy.protocol import RestartStateKind
from nokvpy.rpc import FaultRules, Identity, RpcClient, RpcServer, format_addr, parse_addr
from nokvpy.rpc.metrics_http import (
    MetricsAddressError,
    open_metrics,
    process_collector,
    rpc_collector,
)
from nokvpy.storage import CorruptLogError, Env, LocalMeta, RaftLogStore, StoreIdentity
from raftstore import metrics as store_metrics
from raftstore.changelog import WATCH_KEEP
from raftstore.heartbeat import CoordinatorLink, JoinRefusedError, heartbeat_loop
from raftstore.restart import DATA_FORMAT, derive, load_image
from raftstore.store import Store, StoreConfig
from raftstore.topology.service import Topology

WAL_DIR = "raftwal"  # the raft log's write-ahead log, inside the data directory
WAL_INLINE_STALL = 0.02  # fdatasync on the event loop unless the disk stalls (see Wal)
QUEUE_LIMIT_ENV = "NOKV_QUEUE_LIMIT"  # per-region proposal queue limit (StoreConfig)

log = logging.getLogger("nokvpy.raftstore")


class StartupError(Exception):
    """A refusal to start, printed as one line."""


def cluster_number(cluster_id: str) -> int:
    """The u64 stamped in localmeta for a cluster id string (never 0)."""
    n = int.from_bytes(hashlib.blake2b(cluster_id.encode(), digest_size=8).digest(), "big")
    return n or 1


async def serve(store_id: int, listen: str, coordinators: list[str], data: str,
                cluster_id: str = "nokv", tick_interval: float = 0.1,
                heartbeat_interval: float = 1.0, secret: bytes | None = None,
                options: dict[str, Any] | None = None, metrics_addr: str | None = None,
                advertise: str | None = None,
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run one store until cancelled. `task_status.started(store)` once it serves.
    `options` override `StoreConfig` fields (tests). `metrics_addr` (host:port): serve
    Prometheus metrics there (nokvpy.rpc.metrics_http). `advertise` (host:port, default
    `listen`): the address the store registers and heartbeats, which peers and clients dial;
    it binds `listen`."""
    if store_id <= 0:
        raise StartupError(f"--id must be a positive store id, got {store_id}")
    if not coordinators:
        raise StartupError("--coordinator needs at least one address")
    try:
        host, port = parse_addr(listen)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    if advertise == listen:
        advertise = None  # the default: the listen address (the bound one, for port 0)
    options = dict(options or {})
    queue_limit = os.environ.get(QUEUE_LIMIT_ENV, "").strip()
    if queue_limit:
        if not queue_limit.isdigit() or int(queue_limit) <= 0:
            raise StartupError(f"{QUEUE_LIMIT_ENV} must be a positive integer, got "
                               f"{queue_limit!r}")
        options.setdefault("queue_limit", int(queue_limit))
    try:  # before anything is opened or written: a refusal writes nothing
        metrics = await open_metrics(metrics_addr, f"store {store_id}",
                                     [process_collector("store", store_id, cluster_id)])
    except MetricsAddressError as exc:
        raise StartupError(str(exc)) from None
    try:
        env = Env.open(data)
    except BaseException:
        if metrics is not None:
            await metrics.aclose()
        raise
    rpc: RpcClient | None = None
    raftlog: RaftLogStore | None = None
    try:
        meta = LocalMeta(env)
        try:
            raftlog = RaftLogStore.open_wal(env, os.path.join(data, WAL_DIR),
                                            inline_stall=WAL_INLINE_STALL)
        except CorruptLogError as exc:
            raise StartupError(f"store {store_id} refuses to start: its raft log is corrupt: "
                               f"{exc} (data dir {data}; nothing was written)") from None
        image = load_image(meta, raftlog)
        wanted = StoreIdentity(cluster_number(cluster_id), store_id)
        restart = derive(image, wanted, DATA_FORMAT)
        if restart.kind == RestartStateKind.FATAL:
            raise StartupError(f"store {store_id} refuses to start: {restart.message} "
                               f"(data dir {data}; nothing was written)")
        if image.identity is None:
            await meta.stamp_identity(wanted.cluster_id, wanted.store_id, DATA_FORMAT)
        if restart.kind == RestartStateKind.DEGRADED:
            log.warning("store %d restarts DEGRADED (needs %s): %s", store_id, restart.needs,
                        restart.message)
        identity = Identity(cluster_id, "store", store_id, secret)
        faults = FaultRules()  # shared, as metaroot's: a rule acts on what the client sends too
        rpc = RpcClient(identity, faults=faults)
        server = RpcServer(identity, faults=faults)
        for var, field_name in (("NOKV_UNSAFE_READS", "unsafe_reads"),
                                ("NOKV_UNSAFE_ACK", "unsafe_ack")):
            if os.environ.get(var) == "1":
                options.setdefault(field_name, True)
                log.warning("store %d: %s=1: TEST-ONLY UNSAFE MODE, this store is deliberately "
                            "not linearizable", store_id, var)
        cfg = StoreConfig(store_id, cluster_id, advertise or listen, tick_interval=tick_interval,
                          **options)
        store = Store(cfg, env, rpc, raftlog)
        link = CoordinatorLink(rpc, coordinators)
        store.leases.link = link  # the sweeper routes to lease records through it
        # Before load: every rehosted replica gets the topology apply handlers.
        topology = Topology(store, link)
        try:
            store.load(image, restart)
        except CorruptLogError as exc:  # e.g. an applied index past the log's end
            raise StartupError(f"store {store_id} refuses to start: its raft log is corrupt: "
                               f"{exc} (data dir {data}; nothing was written)") from None
        store.register(server)
        topology.register(server)
        register_failpoint_admin(server)
        if metrics is not None:
            metrics.add(rpc_collector(server, rpc), store_metrics.collector(store))
        async with trio.open_nursery() as nursery:
            bound_host, bound_port = await nursery.start(server.serve, host, port)
            if port == 0 and not advertise:  # the advertised address is the bound one
                store.set_address(format_addr(bound_host, bound_port))
            if metrics is not None:
                await nursery.start(metrics.serve)
            await nursery.start(store.run)
            await nursery.start(topology.run)
            await nursery.start(heartbeat_loop, store, link, heartbeat_interval)
            log.info("store %d serving on %s, advertised as %s (cluster %s, coordinators %s, "
                     "%d region(s))", store_id, format_addr(bound_host, bound_port),
                     store.cfg.address, cluster_id, ",".join(coordinators), len(store.peers))
            task_status.started(store)
    finally:
        if metrics is not None:
            await metrics.aclose()
        if rpc is not None:
            with trio.CancelScope(shield=True):
                await rpc.aclose()
        if raftlog is not None:
            raftlog.close()
        env.close()


async def _run(args) -> None:
    coordinators = [a.strip() for a in args.coordinator.split(",") if a.strip()]
    secret = os.environ.get("NOKV_CLUSTER_SECRET", "").encode() or None
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_until_signal, nursery, args, coordinators, secret)


async def serve_until_signal(nursery, args, coordinators, secret,
                             task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as inner:
            await inner.start(functools.partial(
                serve, args.id, args.listen, coordinators, args.data, args.cluster_id,
                args.tick_ms / 1000.0, 1.0, secret,
                options={"watch_keep": getattr(args, "watch_keep", WATCH_KEEP),
                         "hibernate_tick": getattr(args, "hibernate_ticks", 20)},
                metrics_addr=getattr(args, "metrics_addr", None),
                advertise=getattr(args, "advertise_addr", None)))
            task_status.started()
            async for signum in signals:
                log.info("store %d: signal %d, stopping", args.id, signum)
                inner.cancel_scope.cancel()
                break


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    failpoints.load_from_env()
    try:
        trio.run(_run, args)
    except BaseException as exc:  # noqa: BLE001 - turn known refusals into one line
        refusal = _find(exc, (StartupError, JoinRefusedError))
        if refusal is None:
            raise
        print(f"nokv store: {refusal}", file=sys.stderr, flush=True)
        return 1
    return 0


def _find(exc: BaseException, kinds: tuple[type, ...]) -> BaseException | None:
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _find(sub, kinds)
            if found is not None:
                return found
    return None
