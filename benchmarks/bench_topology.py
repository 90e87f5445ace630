"""Topology transition timings on a real local cluster (docs/PERFORMANCE.md "## Topology").

Measures, end to end from the admin request to TERMINAL_PUBLISHED (the terminal event in
root), on loopback processes started with `LocalCluster`:
  - split: N splits across `--keys` keys of 100-byte values, each a planned publish + raft
    admin command + apply on every replica + terminal publish;
  - merge: merging those regions back pairwise (freeze, freeze confirmation on every
    replica, commit);
  - re-replication of one region of `--repl-keys` keys (default 10,000): an add_peer on the
    fourth store (learner, snapshot or log catch-up, promotion) until TERMINAL_PUBLISHED;
    then the whole repair cycle the scheduler drives after a store is killed for good
    (DOWN detection + add + remove), until every region is back to 3 live voters.

Usage: python benchmarks/bench_topology.py [--splits 8] [--keys 2000] [--repl-keys 10000]
       [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "topology"))

from topo_harness import Topo, wait_until  # noqa: E402

from nokvpy.protocol import Freshness  # noqa: E402
from nokvpy.protocol.store_rpc import AdminRequest  # noqa: E402


def summary(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"n": len(xs), "min_ms": round(xs[0] * 1000, 1),
            "p50_ms": round(statistics.median(xs) * 1000, 1),
            "max_ms": round(xs[-1] * 1000, 1)}


async def load(topo: Topo, prefix: bytes, n: int, clients: int = 16) -> None:
    async def worker(w: int) -> None:
        async with topo.client() as client:
            for i in range(w, n, clients):
                await client.put(prefix + b"%06d" % i, b"x" * 100)

    async with trio.open_nursery() as nursery:
        for w in range(clients):
            nursery.start_soon(worker, w)


async def bench_split_merge(topo: Topo, splits: int, keys: int) -> dict:
    out: dict = {}
    async with topo.client() as client:
        await load(topo, b"s/", keys)
        split_times, merge_times = [], []
        for k in range(1, splits + 1):
            key = b"s/%06d" % (k * keys // (splits + 1))
            route = await client.route(key, Freshness.STRONG)
            leader = await topo.leader_store(client, key)
            t0 = time.perf_counter()
            reply = await topo.admin(client, AdminRequest(
                "split", route.descriptor.region_id, split_key=key), leader)
            split_times.append(time.perf_counter() - t0)
            assert reply.stage == "TERMINAL_PUBLISHED", reply
            await trio.sleep(0.3)
        out["split"] = summary(split_times)
        while True:
            regions = sorted(await topo.regions(client), key=lambda d: d.start_key)
            if len(regions) < 2:
                break
            left, right = regions[-2], regions[-1]
            leader = await topo.leader_store(client, left.start_key or b"\x00")
            t0 = time.perf_counter()
            reply = await topo.admin(client, AdminRequest("merge", left.region_id,
                                                          other_region_id=right.region_id),
                                     leader)
            merge_times.append(time.perf_counter() - t0)
            assert reply.stage == "TERMINAL_PUBLISHED", reply
            await trio.sleep(0.3)
        out["merge"] = summary(merge_times)
    return out


async def bench_replication(topo: Topo, keys: int) -> dict:
    out: dict = {}
    async with topo.client() as client:
        t0 = time.perf_counter()
        await load(topo, b"r/", keys)
        out["load_s"] = round(time.perf_counter() - t0, 2)
        route = await client.route(b"r/", Freshness.STRONG)
        d = route.descriptor
        spare = next(s for s in range(1, 5) if d.peer_on(s) is None)
        leader = await topo.leader_store(client, b"r/")
        t0 = time.perf_counter()
        reply = await topo.admin(client, AdminRequest("add_peer", d.region_id, store_id=spare),
                                 leader, timeout=180)
        out["add_peer_s"] = round(time.perf_counter() - t0, 2)
        out["add_peer_stage"] = reply.stage
        body = await topo.status(client, f"store-{spare}")
        out["new_replica_applied_index"] = body["regions"][str(d.region_id)]["applied_index"]
        out["snapshots_sent"] = (await topo.status(client, f"store-{leader}"))["counters"].get(
            "snapshots_sent", 0)
        # remove it again, then let the scheduler repair a killed store
        await topo.admin(client, AdminRequest("remove_peer", d.region_id, store_id=spare),
                         leader)
        victim = next(p.store_id for p in d.peers if p.store_id != leader)
        t0 = time.perf_counter()
        topo.kill(f"store-{victim}")

        async def repaired():
            regions = await topo.regions(client)
            pending = [e for e in (await topo.transitions(client)).entries
                       if e.phase.name == "ADMITTED"]
            return not pending and all(len(r.voters()) == 3 and r.peer_on(victim) is None
                                       for r in regions)

        await wait_until(repaired, 240, 0.2, "repair")
        out["repair_after_kill_s"] = round(time.perf_counter() - t0, 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--splits", type=int, default=8)
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--repl-keys", type=int, default=10_000)
    ap.add_argument("--repair-after", type=float, default=2.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="nokv-bench-topo-"))
    try:
        topo = Topo(tmp / "a", stores=3).start()
        try:
            results.update(trio.run(bench_split_merge, topo, args.splits, args.keys))
        finally:
            topo.stop_all()
        topo = Topo(tmp / "b", stores=4, replication=3,
                    scheduler=f"repair_after={args.repair_after},stuck_after=60").start()
        try:
            results["replication"] = trio.run(bench_replication, topo, args.repl_keys)
            results["replication"]["keys"] = args.repl_keys
        finally:
            topo.stop_all()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for k, v in results.items():
            print(f"{k:12} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
