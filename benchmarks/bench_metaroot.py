"""metaroot append throughput and watch fan-out latency on 3 real peers.

Starts 3 `nokv metaroot serve` processes on free 127.0.0.1 ports with data in a temp dir
(real LMDB, fsync on), waits for a leader, measures, and kills them (by pid) at the end:

- `single`: one client appending one STORE_JOINED event per AppendRequest in a loop;
- `batched`: one client appending 64 events per AppendRequest;
- `concurrent`: N clients (default 32) appending one event per request at once;
- `fanout`: 10 Watch subscribers on the leader; one writer appends events one at a time; for
  each event the latency from the append's ack to each subscriber receiving it (p50 / p99).

    python benchmarks/bench_metaroot.py [--seconds 3] [--clients 32] [--subscribers 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import trio

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from nokvpy.client.meta import MetaClient  # noqa: E402
from nokvpy.protocol import EventKind, RootEvent, StoreMembership  # noqa: E402
from nokvpy.protocol.metaroot_rpc import (  # noqa: E402
    AppendRequest,
    MetarootStatusRequest,
    WatchRequest,
)
from nokvpy.rpc import Identity, RpcClient  # noqa: E402
from nokvpy.rpc.ports import free_ports  # noqa: E402

CLUSTER = "bench-metaroot"


def event(seq: int, tag: str) -> RootEvent:
    return RootEvent(EventKind.STORE_JOINED, StoreMembership(seq, f"10.1.0.1:{seq}"),
                     f"{tag}-{seq}")


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


class Peers:
    def __init__(self, root: str, n: int = 3):
        ports = free_ports(n)
        self.root = root
        self.addrs = {i + 1: f"127.0.0.1:{ports[i]}" for i in range(n)}
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self) -> None:
        for nid, addr in self.addrs.items():
            argv = [sys.executable, "-m", "nokvpy.cli.main", "metaroot", "serve", "--id", str(nid),
                    "--listen", addr, "--cluster-id", CLUSTER,
                    "--data", os.path.join(self.root, f"metaroot-{nid}")]
            for pid, paddr in self.addrs.items():
                argv += ["--peer", f"{pid}={paddr}"]
            log = open(os.path.join(self.root, f"metaroot-{nid}.log"), "wb")  # noqa: SIM115
            self.procs[nid] = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            log.close()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        self.procs.clear()

    async def leader(self, rpc: RpcClient, deadline: float = 30.0) -> str:
        with trio.fail_after(deadline):
            while True:
                for addr in self.addrs.values():
                    try:
                        st = await rpc.call(addr, MetarootStatusRequest(), timeout=0.5)
                    except Exception:  # noqa: BLE001 - not up yet
                        continue
                    if st.is_leader:
                        return addr
                await trio.sleep(0.05)


def client(n: int) -> RpcClient:
    return RpcClient(Identity(CLUSTER, "client", 1000 + n))


async def bench_appends(peers: Peers, seconds: float, clients: int, per_request: int,
                        tag: str) -> dict:
    rpcs = [client(i) for i in range(clients)]
    metas = [MetaClient(r, list(peers.addrs.values())) for r in rpcs]
    seq = [0]
    lat: list[float] = []
    events = 0
    for i, m in enumerate(metas):  # connect + find the leader
        seq[0] += 1
        await m.call(AppendRequest([event(seq[0], f"{tag}-warm{i}")]))
    stop_at = trio.current_time() + seconds

    async def worker(meta: MetaClient) -> None:
        nonlocal events
        while trio.current_time() < stop_at:
            batch = []
            for _ in range(per_request):
                seq[0] += 1
                batch.append(event(seq[0] + 1_000_000 * len(tag), tag))
            t0 = time.perf_counter()
            await meta.call(AppendRequest(batch))
            lat.append(time.perf_counter() - t0)
            events += per_request

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for m in metas:
            nursery.start_soon(worker, m)
    elapsed = time.perf_counter() - start
    for r in rpcs:
        await r.aclose()
    return {"clients": clients, "events_per_request": per_request, "requests": len(lat),
            "events": events, "seconds": round(elapsed, 3),
            "requests_per_s": round(len(lat) / elapsed, 1),
            "events_per_s": round(events / elapsed, 1),
            "p50_ms": round(pct(lat, 50) * 1000, 2), "p99_ms": round(pct(lat, 99) * 1000, 2)}


async def bench_fanout(peers: Peers, leader: str, subscribers: int, count: int,
                       spread: bool = False) -> dict:
    """Subscribers all on the leader, or (`spread`) round-robin over the 3 peers."""
    rpc = client(500)
    meta = MetaClient(rpc, list(peers.addrs.values()))
    base = 6_000_000 if spread else 5_000_000
    warm = await meta.call(AppendRequest([event(base, "fan-warm")]))
    start_token = warm.last_token
    acked: dict[int, float] = {}
    received: list[dict[int, float]] = [{} for _ in range(subscribers)]
    ready = [0]
    all_ready = trio.Event()

    async def subscriber(i: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
        srpc = client(600 + i)
        try:
            addrs = sorted(peers.addrs.values())
            addr = addrs[i % len(addrs)] if spread else leader
            async with srpc.stream(addr, WatchRequest(start_token, keepalive_ms=200)) as items:
                task_status.started()
                async for item in items:
                    now = time.perf_counter()
                    if not item.events and not all_ready.is_set():
                        ready[0] += 1
                        if ready[0] == subscribers:
                            all_ready.set()
                    for ce in item.events:
                        received[i][ce.token.index] = now
                    if len(received[i]) >= count:
                        return
        finally:
            await srpc.aclose()

    async with trio.open_nursery() as nursery:
        for i in range(subscribers):
            await nursery.start(subscriber, i)
        with trio.move_on_after(2.0):
            await all_ready.wait()  # each stream answered its first keepalive
        for k in range(count):
            reply = await meta.call(AppendRequest([event(base + 1 + k, "fan")]))
            acked[reply.last_token.index] = time.perf_counter()
            await trio.sleep(0.005)
        with trio.move_on_after(10):
            while any(len(r) < count for r in received):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    await rpc.aclose()
    signed = [r[idx] - t for idx, t in acked.items() for r in received if idx in r]
    missing = sum(1 for idx in acked for r in received if idx not in r)
    early = sum(1 for x in signed if x < 0)
    lat = [max(0.0, x) for x in signed]  # a delivery before the writer's ack counts as 0
    return {"subscribers": subscribers, "on": "all peers" if spread else "leader",
            "events": count, "deliveries": len(lat),
            "missing": missing, "before_ack": early,
            "p50_ms": round(pct(lat, 50) * 1000, 2), "p99_ms": round(pct(lat, 99) * 1000, 2),
            "max_ms": round(max(lat) * 1000, 2) if lat else None}


async def run(args) -> dict:
    root = tempfile.mkdtemp(prefix="bench-metaroot-")
    peers = Peers(root)
    try:
        peers.start()
        probe = client(0)
        leader = await peers.leader(probe)
        await probe.aclose()
        out = {
            "single": await bench_appends(peers, args.seconds, 1, 1, "single"),
            "batched": await bench_appends(peers, args.seconds, 1, 64, "batched"),
            "concurrent": await bench_appends(peers, args.seconds, args.clients, 1, "conc"),
            "concurrent_batched": await bench_appends(peers, args.seconds, 8, 64, "cb"),
            "fanout": await bench_fanout(peers, leader, args.subscribers, args.fanout_events),
            "fanout_spread": await bench_fanout(peers, leader, args.subscribers,
                                                args.fanout_events, spread=True),
        }
        out["env"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                      "loadavg": [round(x, 2) for x in os.getloadavg()], "peers": 3,
                      "fsync": True}
        return out
    finally:
        peers.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--subscribers", type=int, default=10)
    ap.add_argument("--fanout-events", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = trio.run(run, args)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for name in ("single", "batched", "concurrent", "concurrent_batched"):
        r = out[name]
        print(f"{name:>18}: {r['clients']:>3} client(s) x {r['events_per_request']:>2} events/req: "
              f"{r['requests_per_s']:>8.1f} req/s {r['events_per_s']:>9.1f} events/s "
              f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms")
    for name in ("fanout", "fanout_spread"):
        f = out[name]
        print(f"{name:>18}: {f['subscribers']} subscribers on {f['on']} x {f['events']} events: "
              f"ack->receive p50 {f['p50_ms']} ms p99 {f['p99_ms']} ms max {f['max_ms']} ms "
              f"(missing {f['missing']}, before ack {f['before_ack']} of {f['deliveries']})")
    print(f"env: {out['env']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
