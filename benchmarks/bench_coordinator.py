"""Coordinator figures: route-read decisions per second and the cost of Catalog.advance.

    python benchmarks/bench_coordinator.py [--seconds 2] [--no-rpc] [--json]

1. In-process (excludes RPC, codec and the service's async plumbing): a Catalog built with
   Catalog.from_descriptors over 10,000 regions; per freshness, one "request" is
   `decide_route_read` (which does the catalog lookup) on a random key, with a FRESH read
   state, the region_lookup grant held and (for STRONG) a confirmed token.
2. Over RPC (1 metaroot, 1 coordinator, 1 store as real processes, its real catalog: one
   region): GetRegionByKey per freshness, 1 request in flight and 32 in flight.
3. Catalog.advance of one event (a descriptor upsert; a planned split) on catalogs of 1,000
   and 100,000 regions: median microseconds per event.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.catalog import Catalog  # noqa: E402
from coordinator.rootview import ReadState  # noqa: E402
from coordinator.serving import RouteRequest, decide_route_read  # noqa: E402
from nokvpy.protocol.enums import (  # noqa: E402
    CatchUpState,
    DegradedMode,
    EventKind,
    Freshness,
)
from nokvpy.protocol.records import (  # noqa: E402
    CommittedEvent,
    PeerMeta,
    RangeSplit,
    RegionDescriptor,
    RegionEpoch,
    RegionUpsert,
    RootEvent,
    RootToken,
)


def key_of(i: int) -> bytes:
    return b"k%08d" % i


def make_catalog(n: int, index: int = 1000) -> Catalog:
    ds = []
    for i in range(n):
        start = b"" if i == 0 else key_of(i)
        end = b"" if i == n - 1 else key_of(i + 1)
        ds.append(RegionDescriptor(i + 1, start, end, RegionEpoch(1, 1),
                                   (PeerMeta(1, 100_000 + 3 * i), PeerMeta(2, 100_001 + 3 * i),
                                    PeerMeta(3, 100_002 + 3 * i))))
    return Catalog.from_descriptors(RootToken(1, index), ds)


def bench_decide(seconds: float, n: int = 10_000) -> dict[str, float]:
    cat = make_catalog(n)
    tok = cat.token
    rs = ReadState(tok, tok, 0, CatchUpState.FRESH, DegradedMode.HEALTHY, True, True)
    rng = random.Random(1)
    keys = [key_of(rng.randrange(n)) + b"x" for _ in range(4096)]
    out = {}
    for fr in (Freshness.STRONG, Freshness.BOUNDED, Freshness.BEST_EFFORT):
        reqs = [RouteRequest(k, fr, None, 0 if fr == Freshness.BOUNDED else None) for k in keys]
        confirmed = tok if fr == Freshness.STRONG else None
        for r in reqs[:200]:  # warm up + sanity
            d = decide_route_read(r, rs, True, confirmed, cat, 1)
            assert d.served and d.descriptor is not None, d
        done = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            for r in reqs:
                decide_route_read(r, rs, True, confirmed, cat, 1)
            done += len(reqs)
        out[fr.name] = done / (time.perf_counter() - t0)
    # lookup alone, for reference
    t0 = time.perf_counter()
    done = 0
    while time.perf_counter() - t0 < seconds / 2:
        for k in keys:
            cat.lookup(k)
        done += len(keys)
    out["lookup_only"] = done / (time.perf_counter() - t0)
    return out


def bench_advance(n: int, reps: int = 2000) -> dict[str, float]:
    cat = make_catalog(n)
    rng = random.Random(2)
    idx = cat.token.index
    res = {}
    # one upsert (REGION_DESCRIPTOR_PUBLISHED: new epoch of an existing region), fresh each rep
    times = []
    for _ in range(reps):
        i = rng.randrange(n)
        d = cat.get(i + 1)
        nd = RegionDescriptor(d.region_id, d.start_key, d.end_key,
                              RegionEpoch(d.epoch.version, d.epoch.conf_ver + 1), d.peers)
        ce = CommittedEvent(RootToken(1, idx + 1),
                            RootEvent(EventKind.REGION_DESCRIPTOR_PUBLISHED, RegionUpsert(nd)))
        t0 = time.perf_counter()
        cat.advance([ce])
        times.append(time.perf_counter() - t0)
    res["upsert_us"] = statistics.median(times) * 1e6
    times = []
    for _ in range(reps):
        i = rng.randrange(n)
        d = cat.get(i + 1)
        split_key = key_of(i) + b"m"
        ver = RegionEpoch(d.epoch.version + 1, d.epoch.conf_ver)
        left = RegionDescriptor(d.region_id, d.start_key, split_key, ver, d.peers)
        right = RegionDescriptor(10 * n + i, split_key, d.end_key, ver,
                                 tuple(PeerMeta(p.store_id, p.peer_id + 7 * n) for p in d.peers))
        ce = CommittedEvent(RootToken(1, idx + 1),
                            RootEvent(EventKind.SPLIT_PLANNED,
                                      RangeSplit(d.region_id, split_key, left, right, d)))
        t0 = time.perf_counter()
        nxt = cat.advance([ce])
        times.append(time.perf_counter() - t0)
    assert len(nxt) == n + 1 and nxt.lookup(split_key).region_id == 10 * n + i
    res["split_planned_us"] = statistics.median(times) * 1e6
    return res


def bench_rpc(seconds: float) -> dict[str, dict[str, float]]:
    import trio

    from nokvpy.client.admin import identity_for, wait_cluster_ready
    from nokvpy.cluster.local import LocalCluster
    from nokvpy.protocol.coordinator_rpc import GetRegionByKeyRequest
    from nokvpy.rpc import RpcClient

    with tempfile.TemporaryDirectory() as tmp:
        lc = LocalCluster(Path(tmp) / "c")
        spec = lc.create(metaroots=1, coordinators=1, stores=1, replication=1)
        try:
            for p in spec.processes:
                lc.start(spec, p)
            wait_cluster_ready(spec, 60)
            addr = spec.coordinator_addrs()[0]

            async def main():
                rpc = RpcClient(identity_for(spec))
                out = {}
                try:
                    for fr in (Freshness.STRONG, Freshness.BOUNDED, Freshness.BEST_EFFORT):
                        for inflight in (1, 32):
                            req = GetRegionByKeyRequest(b"abc", fr)
                            await rpc.call(addr, req, timeout=5)
                            count = 0
                            end = trio.current_time() + seconds

                            async def worker(req=req, end=end):
                                nonlocal count
                                while trio.current_time() < end:
                                    await rpc.call(addr, req, timeout=5)
                                    count += 1

                            t0 = trio.current_time()
                            async with trio.open_nursery() as n:
                                for _ in range(inflight):
                                    n.start_soon(worker)
                            out[f"{fr.name} x{inflight}"] = count / (trio.current_time() - t0)
                finally:
                    await rpc.aclose()
                return out

            return trio.run(main)
        finally:
            lc.stop_all(spec, grace=3.0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--no-rpc", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = {"decide_10k_per_s": bench_decide(a.seconds),
           "advance_1k": bench_advance(1_000), "advance_100k": bench_advance(100_000)}
    if not a.no_rpc:
        res["rpc_per_s"] = bench_rpc(a.seconds)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(k, {kk: round(vv, 1) for kk, vv in v.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
