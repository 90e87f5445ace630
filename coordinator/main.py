"""`nokv coordinator serve`: one coordinator process.

Owns: wiring the coordinator together (RPC client and server, metaroot client, the service
and its background tasks, the metrics endpoint of `--metrics-addr` with its collectors,
coordinator.metrics) under one trio root nursery, failpoint admin, and graceful shutdown
on SIGTERM / SIGINT (drain and seal grants, then exit 0). Never holds protocol logic
(coordinator.service does) and never stores anything durable.

It binds `--listen`; `--advertise-addr` (default the listen address) is the address stores
and clients are given as `--coordinator`. A coordinator does not register itself anywhere,
so the advertised address is only logged at start.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import trio

from coordinator import metrics as coordinator_metrics
from coordinator.scheduler import SchedulerConfig
from coordinator.service import CoordinatorService
from nokvpy import failpoints
from nokvpy.adminsvc import register_failpoint_admin
from nokvpy.client.meta import MetaClient
from nokvpy.rpc import FaultRules, Identity, RpcClient, RpcServer, parse_addr
from nokvpy.rpc.metrics_http import (
    MetricsAddressError,
    open_metrics,
    process_collector,
    rpc_collector,
)

log = logging.getLogger("nokvpy.coordinator")


class StartupError(Exception):
    """A refusal to start, printed as one line."""


async def serve(coordinator_id: int, listen: str, cluster_id: str, metaroot: list[str], *,
                replication: int = 3, grant_ttl: float = 6.0, staleness_window: float = 3.0,
                handle_signals: bool = True, secret: bytes | None = None,
                service_options: dict | None = None, metrics_addr: str | None = None,
                advertise: str | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run one coordinator until SIGTERM / SIGINT or `service.stopped` (tests set it through
    `service.shutdown()`); `task_status.started(service)` once it listens. `metrics_addr`
    (host:port): serve Prometheus metrics there (nokvpy.rpc.metrics_http)."""
    if not metaroot:
        raise StartupError("--metaroot needs at least one address")
    if replication < 1:
        raise StartupError("--replication must be >= 1")
    try:
        host, port = parse_addr(listen)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    identity = Identity(cluster_id, "coordinator", coordinator_id, secret)
    faults = FaultRules()  # shared, as metaroot's: a rule acts on what the client sends too
    rpc = RpcClient(identity, faults=faults)
    meta = MetaClient(rpc, metaroot)
    service = CoordinatorService(coordinator_id, cluster_id, meta, replication=replication,
                                 grant_ttl=grant_ttl, staleness_window=staleness_window,
                                 **(service_options or {}))
    server = RpcServer(identity, faults=faults)
    service.register(server)
    register_failpoint_admin(server)
    try:
        metrics = await open_metrics(
            metrics_addr, f"coordinator-{coordinator_id}",
            [process_collector("coordinator", coordinator_id, cluster_id),
             rpc_collector(server, rpc), coordinator_metrics.collector(service)])
    except MetricsAddressError as exc:
        with trio.CancelScope(shield=True), trio.move_on_after(2.0):
            await rpc.aclose()
        raise StartupError(str(exc)) from None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await nursery.start(server.serve, host, port)
            if metrics is not None:
                await nursery.start(metrics.serve)
            log.info("coordinator-%d serving on %s, advertised as %s (cluster %s, metaroot %s)",
                     coordinator_id, listen, advertise or listen, cluster_id, ",".join(metaroot))
            task_status.started(service)
            if handle_signals:
                async with trio.open_nursery() as waiters:
                    async def on_signal() -> None:
                        await wait_for_signal()
                        waiters.cancel_scope.cancel()

                    async def on_stop() -> None:
                        await service.stopped.wait()
                        waiters.cancel_scope.cancel()

                    waiters.start_soon(on_signal)
                    waiters.start_soon(on_stop)
            else:
                await service.stopped.wait()
            if not service.stopped.is_set():
                with trio.CancelScope(shield=True), trio.move_on_after(grant_ttl + 1.0):
                    await service.shutdown(timeout=grant_ttl)
            nursery.cancel_scope.cancel()
    finally:
        if metrics is not None:
            await metrics.aclose()
        with trio.CancelScope(shield=True), trio.move_on_after(2.0):
            await rpc.aclose()


async def wait_for_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


def main(args) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    failpoints.load_from_env()
    metaroot = [a.strip() for a in args.metaroot.split(",") if a.strip()]
    secret = os.environ.get("NOKV_CLUSTER_SECRET", "").encode() or None
    try:
        scheduler = SchedulerConfig.parse(getattr(args, "scheduler", None)
                                          or os.environ.get("NOKV_SCHEDULER"))
    except ValueError as exc:
        print(f"nokv coordinator: --scheduler: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        trio.run(lambda: serve(args.id, args.listen, args.cluster_id, metaroot,
                               replication=args.replication, grant_ttl=args.grant_ttl,
                               staleness_window=args.staleness_window, secret=secret,
                               service_options={"scheduler": scheduler},
                               metrics_addr=getattr(args, "metrics_addr", None),
                               advertise=getattr(args, "advertise_addr", None)))
    except StartupError as exc:
        print(f"nokv coordinator: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
