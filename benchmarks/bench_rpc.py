"""RPC round trips per second on loopback (nokvpy.rpc over real TCP sockets).

The server runs in a child process (`--serve`, prints its port on stdout); the client measures
sequential round trips (1 in flight) and 64 concurrent callers sharing one connection, for
`Ping` (answered inline by the server's reader task) and `Echo` (answered by a spawned
handler task, the path every service handler takes).

    python benchmarks/bench_rpc.py [--seconds 3] [--payload 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nokvpy.rpc import Identity, RpcClient, RpcServer  # noqa: E402
from nokvpy.wire import Echo, Ping  # noqa: E402

CLUSTER = "bench"
SECRET = b"bench-secret"


async def serve() -> None:
    server = RpcServer(Identity(CLUSTER, "store", 1, secret=SECRET))
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve, "127.0.0.1", 0)
        print(port, flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # exit when the parent closes stdin
        nursery.cancel_scope.cancel()


async def measure(addr: str, make, in_flight: int, seconds: float) -> dict:
    client = RpcClient(Identity(CLUSTER, "client", 2, secret=SECRET))
    try:
        await client.call(addr, make(), timeout=5.0)  # connect + warm up
        done = 0
        latencies: list[float] = []
        stop_at = trio.current_time() + seconds

        async def worker() -> None:
            nonlocal done
            while trio.current_time() < stop_at:
                t0 = time.perf_counter()
                await client.call(addr, make(), timeout=5.0)
                latencies.append(time.perf_counter() - t0)
                done += 1

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(in_flight):
                nursery.start_soon(worker)
        elapsed = time.perf_counter() - start
        latencies.sort()
        return {
            "request": type(make()).__name__,
            "in_flight": in_flight,
            "round_trips": done,
            "seconds": round(elapsed, 3),
            "rps": round(done / elapsed),
            "p50_us": round(latencies[len(latencies) // 2] * 1e6),
            "p99_us": round(latencies[int(len(latencies) * 0.99)] * 1e6),
        }
    finally:
        await client.aclose()


async def run(args: argparse.Namespace) -> list[dict]:
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        addr = f"127.0.0.1:{port}"
        payload = b"x" * args.payload
        results = []
        for make in (lambda: Ping(payload), lambda: Echo(payload)):
            for in_flight in (1, 64):
                results.append(await measure(addr, make, in_flight, args.seconds))
        return results
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--payload", type=int, default=64, help="request payload bytes")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve)
        return
    results = trio.run(run, args)
    if args.json:
        print(json.dumps({"python": platform.python_version(), "cpus": os.cpu_count(),
                          "results": results}, indent=2))
        return
    for r in results:
        print(f"{r['request']:5} in_flight={r['in_flight']:3}  {r['rps']:7} rps  "
              f"p50 {r['p50_us']} us  p99 {r['p99_us']} us")


if __name__ == "__main__":
    main()
