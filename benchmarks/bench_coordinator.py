"""Coordinator figures: route-read decisions per second and the cost of Catalog.advance.

    python benchmarks/bench_coordinator.py [--seconds 2] [--no-rpc] [--rpc-regions 10000] [--json]

1. In-process (excludes RPC, codec and the service's async plumbing): a Catalog built with
   Catalog.from_descriptors over 10,000 regions; per freshness, one "request" is
   `decide_route_read` (which does the catalog lookup) on a random key, with a FRESH read
   state, the region_lookup grant held and (for STRONG) a confirmed token.
2. Over RPC (1 metaroot and 1 coordinator as real processes, no store process): the real
   rooted catalog is seeded to `--rpc-regions` regions (default 10,000): a phantom store
   joins, the coordinator bootstraps the first region, and n - 1 rooted SPLIT_COMMITTED
   events are appended to metaroot in batches; once the coordinator's catalog is FRESH with
   lag 0 and >= n regions, GetRegionByKey per freshness on random keys spread over all
   regions, 1 request in flight and 32 in flight. Progress goes to stderr; `rpc_setup`
   reports what the catalog held.
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


def split_events(first: RegionDescriptor, n: int, first_id: int) -> list[RootEvent]:
    """Rooted SPLIT_COMMITTED events (terminal without a plan: one event per split) that cut
    `first` (the bootstrapped region [b"", b"")) into `n` regions with boundaries key_of(1),
    ..., key_of(n - 1): a balanced binary tree of splits in breadth-first order, so each
    event's base is the descriptor an earlier event installed and epoch versions stay ~log2 n.
    New region and peer ids are taken from `first_id` on (a block allocated by AllocId)."""
    assert not first.start_key and not first.end_key, first
    ids = iter(range(first_id, first_id + (1 + len(first.peers)) * n))
    base0 = RegionDescriptor(first.region_id, b"", b"", first.epoch, first.peers)
    queue = [(0, n, base0)]
    out = []
    for lo, hi, base in queue:  # the list grows while it is walked (breadth first)
        if hi - lo < 2:
            continue
        mid = (lo + hi) // 2
        key = key_of(mid)
        ver = RegionEpoch(base.epoch.version + 1, base.epoch.conf_ver)
        left = RegionDescriptor(base.region_id, base.start_key, key, ver, base.peers)
        right = RegionDescriptor(next(ids), key, base.end_key, ver,
                                 tuple(PeerMeta(p.store_id, next(ids), p.learner)
                                       for p in base.peers))
        out.append(RootEvent(EventKind.SPLIT_COMMITTED,
                             RangeSplit(base.region_id, key, left, right, base),
                             f"bench-split:{base.region_id}:{mid}"))
        queue.append((lo, mid, left))
        queue.append((mid, hi, right))
    assert len(out) == n - 1
    return out


def _progress(msg: str) -> None:
    print(f"[rpc] {msg}", file=sys.stderr, flush=True)


def bench_rpc(seconds: float, n_regions: int = 10_000) -> dict[str, dict]:
    """GetRegionByKey over RPC against a real coordinator whose rooted catalog holds
    `n_regions` regions.

    Processes: 1 metaroot and 1 coordinator (LocalCluster); no store process runs (a store
    would be told to host every region). A phantom store joins through the coordinator
    (StoreJoin with an address nobody listens on), the coordinator bootstraps the first region
    on it as usual, and this function then appends n - 1 rooted splits of that region straight
    to metaroot in batches. Measured only once the coordinator reports a FRESH catalog with
    lag 0 holding >= n regions. The phantom store never heartbeats, so replies carry
    leader_store_id 0 and the scheduler stays idle (never scheduler_ready)."""
    import os
    import signal

    import trio

    from nokvpy.client.admin import identity_for
    from nokvpy.client.meta import MetaClient
    from nokvpy.cluster.local import LocalCluster, pid_alive
    from nokvpy.protocol.coordinator_rpc import (
        AllocIdRequest,
        DiagnosticsRequest,
        GetRegionByKeyRequest,
        StoreJoinRequest,
    )
    from nokvpy.protocol.metaroot_rpc import AppendRequest
    from nokvpy.rpc import RpcClient

    n_regions = max(1, n_regions)
    batch = 250  # events per AppendRequest (one raft entry)
    with tempfile.TemporaryDirectory() as tmp:
        lc = LocalCluster(Path(tmp) / "c")
        spec = lc.create(metaroots=1, coordinators=1, stores=1, replication=1)
        started = [p for p in spec.processes if p.kind != "store"]  # no store process
        phantom_addr = spec.of_kind("store")[0].address  # a free port; nothing listens on it
        pids = {}
        try:
            for p in started:
                pids[p.name] = lc.start(spec, p)
            addr = spec.coordinator_addrs()[0]

            async def main():
                rpc = RpcClient(identity_for(spec))
                meta = MetaClient(rpc, spec.metaroot_addrs(), timeout=30.0)
                setup: dict = {}
                out: dict = {}

                async def diag() -> dict:
                    return (await rpc.call(addr, DiagnosticsRequest(), timeout=5)).body

                async def wait_for(pred, timeout: float, what: str, every: float = 0.2):
                    deadline = trio.current_time() + timeout
                    last = None
                    next_note = trio.current_time() + 2.0
                    while True:
                        for p in started:
                            if not pid_alive(pids[p.name]):
                                raise RuntimeError(f"{p.name} died: {lc.last_log_line(p.name)}")
                        try:
                            last = await pred()
                            if last and not isinstance(last, str):
                                return last
                        except Exception as exc:  # noqa: BLE001 - still converging
                            last = f"{type(exc).__name__}: {exc}"[:200]
                        if trio.current_time() > deadline:
                            raise TimeoutError(f"{what} within {timeout:.0f}s; last: {last}")
                        if trio.current_time() > next_note and isinstance(last, str):
                            _progress(f"waiting for {what}: {last}")
                            next_note = trio.current_time() + 2.0
                        await trio.sleep(every)

                try:
                    async def serving():
                        d = await diag()
                        held = set(d["grants_held"])
                        if {"alloc_id", "region_lookup"} <= held and \
                                d["catch_up_state"] == "FRESH":
                            return d
                        return f"grants {sorted(held)}, {d['catch_up_state']}"
                    await wait_for(serving, 60, "coordinator FRESH with its grants")

                    join = await rpc.call(addr, StoreJoinRequest(0, phantom_addr), timeout=10)
                    _progress(f"phantom store {join.store_id} joined at {phantom_addr} "
                              "(no process behind it)")

                    async def first_region():
                        r = await rpc.call(addr, GetRegionByKeyRequest(
                            b"", Freshness.BOUNDED, None, 0), timeout=5)
                        return r.descriptor or "no region yet"
                    first = await wait_for(first_region, 30, "the bootstrapped first region")

                    t0 = time.perf_counter()
                    if n_regions > 1:
                        alloc = await rpc.call(addr, AllocIdRequest(
                            (1 + len(first.peers)) * n_regions), timeout=10)
                        events = split_events(first, n_regions, alloc.first)
                        _progress(f"appending {len(events)} rooted SPLIT_COMMITTED events "
                                  f"to metaroot in batches of {batch}")
                        note = time.perf_counter()
                        for i in range(0, len(events), batch):
                            await meta.call(AppendRequest(events[i:i + batch]), timeout=60)
                            done = min(i + batch, len(events))
                            if time.perf_counter() - note > 1.0 or done == len(events):
                                note = time.perf_counter()
                                el = note - t0
                                _progress(f"  {done}/{len(events)} splits appended "
                                          f"({el:.1f}s, {done / el:.0f} events/s)")
                    appended_s = time.perf_counter() - t0

                    async def caught_up():
                        d = await diag()
                        if d["region_count"] >= n_regions and d["catch_up_state"] == "FRESH" \
                                and d["root_lag"] == 0:
                            return d
                        return (f"catalog {d['region_count']} regions, "
                                f"{d['catch_up_state']}, lag {d['root_lag']}")
                    d = await wait_for(caught_up, 120 + n_regions / 50,
                                       f"catalog FRESH with >= {n_regions} regions", 0.25)
                    seeded_s = time.perf_counter() - t0
                    _progress(f"coordinator catalog: {d['region_count']} regions, "
                              f"{d['catch_up_state']}, lag {d['root_lag']}, served token "
                              f"{d['served_token']['index']} ({seeded_s:.1f}s after the "
                              f"first append, appends took {appended_s:.1f}s)")
                    setup.update(catalog_regions=d["region_count"],
                                 served_token_index=d["served_token"]["index"],
                                 stores=d["store_count"], seed_append_s=round(appended_s, 2),
                                 seed_total_s=round(seeded_s, 2))

                    rng = random.Random(3)
                    idx = [rng.randrange(n_regions) for _ in range(16_384)]
                    keys = [key_of(i) + b"x" for i in idx]
                    # sanity: every key routes to the region [key_of(i), key_of(i + 1))
                    for i, k in zip(idx[:64], keys[:64], strict=True):
                        r = await rpc.call(addr, GetRegionByKeyRequest(
                            k, Freshness.BEST_EFFORT), timeout=5)
                        want = b"" if i == 0 else key_of(i)
                        assert r.descriptor.start_key == want and r.descriptor.contains(k), \
                            (k, r.descriptor)
                    bad = 0
                    regions_hit: set[int] = set()
                    phase = 0
                    for fr in (Freshness.STRONG, Freshness.BOUNDED, Freshness.BEST_EFFORT):
                        reqs = [GetRegionByKeyRequest(k, fr) for k in keys]
                        for inflight in (1, 32):
                            phase += 1  # each phase and worker starts elsewhere in the pool
                            starts = [phase * 4099 + w * (len(reqs) // inflight)
                                      for w in range(inflight)]
                            await rpc.call(addr, reqs[0], timeout=5)
                            count = 0
                            end = trio.current_time() + seconds

                            async def worker(j, reqs=reqs, end=end):
                                nonlocal count, bad
                                while trio.current_time() < end:
                                    req = reqs[j % len(reqs)]
                                    j += 1
                                    r = await rpc.call(addr, req, timeout=5)
                                    d = r.descriptor
                                    if d is None or not d.contains(req.key):
                                        bad += 1
                                    else:
                                        regions_hit.add(d.region_id)
                                    count += 1

                            t0 = trio.current_time()
                            async with trio.open_nursery() as nur:
                                for j in starts:
                                    nur.start_soon(worker, j)
                            out[f"{fr.name} x{inflight}"] = count / (trio.current_time() - t0)
                    d = await diag()
                    setup.update(regions_hit=len(regions_hit), wrong_routes=bad,
                                 catalog_regions_after=d["region_count"],
                                 catch_up_state_after=d["catch_up_state"])
                finally:
                    await rpc.aclose()
                return out, setup

            out, setup = trio.run(main)
        finally:
            try:
                lc.stop_all(spec, grace=3.0)
            finally:
                for pid in pids.values():
                    if pid_alive(pid):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
        problems = 0
        for p in started:
            try:
                text = lc.log_path(p.name).read_text(errors="replace")
            except OSError:
                continue
            hits = [ln for ln in text.splitlines() if "Traceback" in ln or " ERROR " in ln]
            problems += len(hits)
            for ln in hits[:5]:
                _progress(f"{p.name} log: {ln[:200]}")
        setup["log_error_lines"] = problems
        return {"rpc_per_s": out, "rpc_setup": setup}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--no-rpc", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rpc-regions", type=int, default=10_000,
                    help="regions in the real coordinator's rooted catalog for the RPC part")
    a = ap.parse_args()
    res = {"decide_10k_per_s": bench_decide(a.seconds),
           "advance_1k": bench_advance(1_000), "advance_100k": bench_advance(100_000)}
    if not a.no_rpc:
        res.update(bench_rpc(a.seconds, a.rpc_regions))
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(k, {kk: round(vv, 1) if isinstance(vv, float) else vv
                      for kk, vv in v.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
