"""`nokv bench puts | gets | routes`: load a cluster and report throughput and latency.

Owns: the closed-loop load generator (N concurrent clients, each with one request in flight),
pre-splitting into `--regions` regions, and the report (ops/s, p50, p99; JSON keys `ops_s`,
`p50_ms`, `p99_ms`). Starts a temporary local cluster when neither `--dir` nor
`--coordinator` is given, and tears it down afterwards. Never restarts a process of a `--dir`
cluster that is not running (the user may have killed it on purpose) unless
`--restart-stopped` says so.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import trio

from nokvpy.cli.common import CliError
from nokvpy.cli.output import Progress
from nokvpy.client import Client
from nokvpy.cluster.local import LocalCluster
from nokvpy.protocol import Freshness


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


def run(args) -> int:
    tmp = None
    cluster = None
    try:
        if args.coordinator:
            coordinators = [a.strip() for a in args.coordinator.split(",") if a.strip()]
            cluster_id = os.environ.get("NOKV_CLUSTER_ID", "nokv")
            secret = os.environ.get("NOKV_CLUSTER_SECRET", "").encode() or None
        else:
            root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="nokv-bench-"))
            tmp = root if not args.dir else None
            cluster = LocalCluster(root)
            if not cluster.exists():
                if args.dir:
                    cluster = None
                    raise CliError(f"no cluster in {root} (run `nokv cluster up --dir {args.dir}`, "
                                   "or leave out --dir to bench a temporary cluster)")
                cluster.create(stores=3, replication=3)
            full = cluster.load()
            spec = full.serving()  # a retired store or metaroot peer stays stopped for good
            from nokvpy.client.admin import wait_cluster_ready

            stopped = [p.name for p in spec.processes if cluster.pid(p.name) is None]
            if args.dir and stopped and not args.restart_stopped:
                raise CliError(f"{', '.join(stopped)} {'is' if len(stopped) == 1 else 'are'} not "
                               f"running in {root}; bench does not restart processes on its own: "
                               "pass --restart-stopped, or start them with "
                               f"`nokv cluster up --dir {args.dir}`")
            progress = Progress("bench", enabled=not args.json)
            for proc in spec.processes:
                cluster.start(full, proc)
            progress.update(f"starting cluster in {root}")
            wait_cluster_ready(spec, timeout=60.0, on_progress=progress.update)
            coordinators = spec.coordinator_addrs()
            cluster_id, secret = spec.cluster_id, spec.secret.encode()
        result = trio.run(bench, args, coordinators, cluster_id, secret)
    finally:
        if tmp is not None and cluster is not None:
            cluster.stop_all(cluster.load())
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.workload}: {result['ops']} ops in {result['seconds']:.1f}s with "
              f"{args.clients} clients, {result['regions']} region(s): {result['ops_s']:.0f} ops/s, "
              f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, errors {result['errors']}")
    return 0


def bench_key(i: int, keyspace: int) -> bytes:
    return b"bench/%08d" % (i % keyspace)


async def presplit(client: Client, regions: int, keyspace: int) -> int:
    """Split the bench keyspace into `regions` regions (through the admin path)."""
    if regions <= 1:
        return 1
    from nokvpy.protocol.store_rpc import AdminRequest

    step = keyspace // regions
    for r in range(1, regions):
        key = bench_key(r * step, keyspace)
        for _ in range(50):
            route = await client.route(key, Freshness.BEST_EFFORT)
            d = route.descriptor
            if d is not None and d.start_key == key:
                break
            try:
                addr = await client._store_addr(route.leader_store_id)
                await client.rpc.call(addr, AdminRequest("split", d.region_id, split_key=key),
                                      timeout=30.0)
                break
            except Exception:  # noqa: BLE001 - leader moving; retry
                await trio.sleep(0.2)
    reply = await client.scan_regions()
    return len(reply.descriptors)


async def bench(args, coordinators: list[str], cluster_id: str, secret: bytes | None) -> dict:
    keyspace = 10_000
    value = b"v" * args.value_size
    async with Client(coordinators, cluster_id=cluster_id, secret=secret, timeout=args.timeout,
                      role="admin") as client:
        await client.route(b"", Freshness.BEST_EFFORT)  # fail at once when nothing answers
        regions = await presplit(client, args.regions, keyspace)
        if args.workload == "gets":  # load the keys first
            async with trio.open_nursery() as n:
                for c in range(16):
                    async def load(c=c) -> None:
                        for i in range(c, 1000, 16):
                            await client.put(bench_key(i, keyspace), value)
                    n.start_soon(load)
        latencies: list[float] = []
        errors = 0
        stop_at = trio.current_time() + args.duration
        progress = Progress(f"bench {args.workload}", enabled=not args.json)

        async def worker(cid: int) -> None:
            nonlocal errors
            i = cid
            while trio.current_time() < stop_at:
                key = bench_key(i if args.workload != "gets" else i % 1000, keyspace)
                t0 = time.perf_counter()
                try:
                    if args.workload == "puts":
                        await client.put(key, value)
                    elif args.workload == "gets":
                        await client.get(key)
                    else:
                        await client.route(key, Freshness.BOUNDED)
                    latencies.append(time.perf_counter() - t0)
                except Exception:  # noqa: BLE001 - counted, the run goes on
                    errors += 1
                i += args.clients

        async def reporter() -> None:
            start = trio.current_time()
            while trio.current_time() < stop_at:
                await trio.sleep(1.0)
                elapsed = trio.current_time() - start
                progress.update(f"{len(latencies)} ops, {len(latencies) / elapsed:.0f} ops/s")

        t_start = time.perf_counter()
        async with trio.open_nursery() as n:
            n.start_soon(reporter)
            for c in range(args.clients):
                n.start_soon(worker, c)
        seconds = time.perf_counter() - t_start
        progress.done()
    if not latencies:
        raise CliError(f"no operation succeeded ({errors} errors)")
    lat = sorted(latencies)
    return {
        "workload": args.workload, "clients": args.clients, "regions": regions,
        "seconds": seconds, "ops": len(lat), "errors": errors,
        "ops_s": len(lat) / seconds, "p50_ms": percentile(lat, 0.50) * 1000,
        "p99_ms": percentile(lat, 0.99) * 1000,
    }
