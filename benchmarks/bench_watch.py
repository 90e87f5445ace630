"""Watch delivery and transaction throughput on a real local cluster (docs/PERFORMANCE.md
"## Watch and transactions").

Measures, on loopback processes started with `LocalCluster` (3 stores, one region):
  - watch delivery: `--writers` clients put to keys under a watched prefix for `--seconds`;
    one watcher follows the prefix. For each change: from the put's send to the event's
    arrival at the watcher, and from the put's acknowledgement to the event (negative when
    the event came first; reported as p50 / p99 of both). Every acknowledged put must arrive.
  - transactions: `--txn-clients` clients each running compare-and-put transactions of 2 keys
    of one region for `--seconds`: transactions per second and p50 / p99 latency.

Usage: python benchmarks/bench_watch.py [--seconds 10] [--writers 16] [--txn-clients 64]
       [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "topology"))

from topo_harness import Topo  # noqa: E402

from nokvpy.client import Compare, Op  # noqa: E402


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def watch_delivery(topo: Topo, seconds: float, writers: int) -> dict:
    sent: dict[bytes, float] = {}
    acked: dict[bytes, float] = {}
    arrived: dict[bytes, float] = {}
    async with topo.client() as client, topo.client() as wclient:
        async with wclient.watch(b"bw/", prefix=True, buffer=100_000) as w:
            stop = trio.Event()

            async def writer(i: int) -> None:
                n = 0
                while not stop.is_set():
                    value = b"%d/%d" % (i, n)
                    sent[value] = time.monotonic()
                    await client.put(b"bw/%03d" % i, value)
                    acked[value] = time.monotonic()
                    n += 1

            async def watcher() -> None:
                async for ev in w:
                    if ev.value is not None:
                        arrived[ev.value] = time.monotonic()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watcher)
                async with trio.open_nursery() as writers_n:
                    for i in range(writers):
                        writers_n.start_soon(writer, i)
                    await trio.sleep(seconds)
                    stop.set()
                with trio.move_on_after(10):
                    while not set(acked) <= set(arrived):
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
    missing = set(acked) - set(arrived)
    from_send = [(arrived[v] - sent[v]) * 1000 for v in acked if v in arrived]
    from_ack = [(arrived[v] - acked[v]) * 1000 for v in acked if v in arrived]
    return {"puts": len(acked), "events": len(arrived), "missing": len(missing),
            "puts_per_s": round(len(acked) / seconds),
            "send_to_event_ms": {"p50": round(pct(from_send, 0.5), 2),
                                 "p99": round(pct(from_send, 0.99), 2)},
            "ack_to_event_ms": {"p50": round(pct(from_ack, 0.5), 2),
                                "p99": round(pct(from_ack, 0.99), 2)},
            "put_latency_ms": {"p50": round(statistics.median(
                (acked[v] - sent[v]) * 1000 for v in acked), 2)}}


async def txn_throughput(topo: Topo, seconds: float, clients: int) -> dict:
    latencies: list[float] = []
    succeeded = [0]
    async with topo.client() as client:
        stop = trio.Event()

        async def worker(i: int) -> None:
            a, b = b"bt/%03d/a" % i, b"bt/%03d/b" % i
            n = 0
            while not stop.is_set():
                t = time.monotonic()
                r = await client.txn([Compare.mod(a, "==", 0)] if n == 0 else [],
                                     [Op.put(a, b"%d" % n), Op.put(b, b"%d" % n)], [])
                latencies.append((time.monotonic() - t) * 1000)
                succeeded[0] += r.succeeded
                n += 1

        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(worker, i)
            await trio.sleep(seconds)
            stop.set()
    return {"txns": len(latencies), "succeeded": succeeded[0],
            "txns_per_s": round(len(latencies) / seconds),
            "latency_ms": {"p50": round(pct(latencies, 0.5), 2),
                           "p99": round(pct(latencies, 0.99), 2)}}


async def main(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        topo = Topo(Path(tmp) / "cluster", stores=3)
        try:
            await topo.astart()
            out = {"watch": await watch_delivery(topo, args.seconds, args.writers),
                   "txn": await txn_throughput(topo, args.seconds, args.txn_clients)}
        finally:
            topo.stop_all()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--txn-clients", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    a = parser.parse_args()
    result = trio.run(main, a)
    print(json.dumps(result, indent=2) if a.json else result)
