"""Storage benchmark: raw disk fsync rate next to raft-log group-commit throughput.

Usage: python benchmarks/bench_storage.py [--dir DIR] [--seconds S] [--json]

1. raw fsync: write 4 KiB + os.fsync in a loop on a file in DIR (the ceiling for any
   durable commit rate on this disk).
2. write_ready: one fsynced LMDB transaction per round holding `batch` entries of 128 bytes
   for each of `groups` raft groups (what the raftstore ready loop does per loop turn).
3. concurrent: N tasks each persisting 1 entry of its own group via write_ready at the same
   time, showing how many commits the group commit folds into one transaction.
4. hot reads: GroupStorage.term() and entries() from the in-memory view.
5. processes: 1 and 3 processes at once, each committing one small transaction after another
   (one put into each of two named databases, fsynced), as three stores of a replicated
   write do: how the disk serializes their fsyncs.
6. wal processes: the same with the stores' raft log write-ahead log instead: 1 and 3
   processes, each appending one 200-byte frame after another (`Wal.append`: one write and
   one fdatasync, on the event loop as stores do).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nokvpy.raft.types import Entry, HardState  # noqa: E402
from nokvpy.storage import Env, RaftLogStore  # noqa: E402

ENTRY_BYTES = 128


def bench_fsync(directory: Path, seconds: float) -> dict:
    path = directory / "fsync.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    block = os.urandom(4096)
    n = 0
    try:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            os.pwrite(fd, block, (n % 256) * 4096)
            os.fsync(fd)
            n += 1
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()
    return {"fsyncs_per_s": n / dt, "latency_ms": dt / n * 1000}


async def bench_write_ready(directory: Path, groups: int, batch: int, seconds: float) -> dict:
    path = directory / f"ready-g{groups}-b{batch}"
    env = Env.open(path, map_size=256 << 20)
    store = RaftLogStore(env)
    payload = os.urandom(ENTRY_BYTES)
    nxt = dict.fromkeys(range(1, groups + 1), 1)
    rounds = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        items = []
        for gid in range(1, groups + 1):
            lo = nxt[gid]
            ents = [Entry(1, i, 0, payload) for i in range(lo, lo + batch)]
            nxt[gid] = lo + batch
            items.append((gid, HardState(1, 1, lo + batch - 1), ents, None))
        await store.write_ready(items)
        rounds += 1
        if rounds % 200 == 0:  # keep the log bounded, as the raftstore would
            for gid in range(1, groups + 1):
                await store.compact(gid, nxt[gid] - 1 - batch)
    dt = time.perf_counter() - t0
    env.close()
    shutil.rmtree(path)
    return {
        "groups": groups,
        "batch": batch,
        "txn_per_s": rounds / dt,
        "entries_per_s": rounds * groups * batch / dt,
        "mib_per_s": rounds * groups * batch * ENTRY_BYTES / dt / (1 << 20),
        "latency_ms": dt / rounds * 1000,
    }


async def bench_concurrent(directory: Path, tasks: int, seconds: float) -> dict:
    path = directory / f"concurrent-{tasks}"
    env = Env.open(path, map_size=256 << 20)
    store = RaftLogStore(env)
    payload = os.urandom(ENTRY_BYTES)
    commits = 0
    deadline = time.perf_counter() + seconds

    async def worker(gid: int) -> None:
        nonlocal commits
        i = 1
        while time.perf_counter() < deadline:
            await store.write_ready([(gid, HardState(1, 1, i), [Entry(1, i, 0, payload)], None)])
            i += 1
            commits += 1

    t0 = time.perf_counter()
    txn0 = env.stats.transactions
    async with trio.open_nursery() as nursery:
        for gid in range(1, tasks + 1):
            nursery.start_soon(worker, gid)
    dt = time.perf_counter() - t0
    txns = env.stats.transactions - txn0
    env.close()
    shutil.rmtree(path)
    return {
        "tasks": tasks,
        "commits_per_s": commits / dt,
        "txn_per_s": txns / dt,
        "commits_per_txn": commits / max(txns, 1),
    }


async def bench_reads(directory: Path) -> dict:
    path = directory / "reads"
    env = Env.open(path, map_size=64 << 20, sync=False)
    store = RaftLogStore(env)
    payload = os.urandom(ENTRY_BYTES)
    for lo in range(1, 10_001, 500):
        ents = [Entry(1 + lo // 2000, i, 0, payload) for i in range(lo, lo + 500)]
        await store.write_ready([(1, None, ents, None)])
    g = store.group(1)
    n = 200_000
    t0 = time.perf_counter()
    for i in range(n):
        g.term(8_900 + (i & 1023))
    term_ns = (time.perf_counter() - t0) / n * 1e9
    m = 20_000
    t0 = time.perf_counter()
    for i in range(m):
        g.entries(9_900 + (i & 63), 10_001)
    entries_us = (time.perf_counter() - t0) / m * 1e6
    t0 = time.perf_counter()
    for _ in range(200):
        g.entries(1, 1_001)
    disk_us = (time.perf_counter() - t0) / 200 * 1e6
    env.close()
    shutil.rmtree(path)
    return {"term_ns": term_ns, "entries_cached_us": entries_us, "entries_1000_disk_us": disk_us}


def _commit_loop(path: str, seconds: float, out) -> None:
    """Child process: commit small fsynced transactions for `seconds`; send latencies."""
    import lmdb

    env = lmdb.open(path, map_size=1 << 28, max_dbs=4, sync=True, metasync=True)
    a, b = env.open_db(b"a"), env.open_db(b"b")
    lat = []
    value = b"v" * 128
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        with env.begin(write=True) as txn:
            key = b"k%08d" % i
            txn.put(key, value, db=a)
            txn.put(key, value, db=b)
        lat.append(time.perf_counter() - t0)
        i += 1
    env.close()
    lat.sort()
    out.put((len(lat) / seconds, lat[len(lat) // 2] * 1000))


def _wal_loop(path: str, seconds: float, out) -> None:
    """Child process: append 200-byte WAL frames, one fdatasync each, for `seconds`."""
    from nokvpy.storage.wal import Wal

    async def loop() -> list[float]:
        wal, _ = Wal.open(path, inline_stall=1.0)
        lat = []
        payload = b"f" * 200
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            await wal.append([payload])
            lat.append(time.perf_counter() - t0)
        wal.close()
        return lat

    lat = sorted(trio.run(loop))
    out.put((len(lat) / seconds, lat[len(lat) // 2] * 1000))


def bench_processes(directory: Path, processes: int, seconds: float,
                    target=_commit_loop) -> dict:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(str(directory / f"proc-{i}"), seconds, out))
             for i in range(processes)]
    for p in procs:
        p.start()
    try:
        rows = [out.get(timeout=seconds + 60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return {"processes": processes,
            "txn_per_s_each": sum(r[0] for r in rows) / len(rows),
            "p50_ms": sorted(r[1] for r in rows)[len(rows) // 2]}


async def run(directory: Path, seconds: float) -> dict:
    """Each durable measurement is preceded by a raw fsync measurement of the same length, so
    the two are side by side in time (a shared disk's fsync rate drifts by 5x over minutes)."""
    results: dict = {"dir": str(directory), "fsync": bench_fsync(directory, seconds)}
    results["write_ready"] = []
    for groups in (1, 8):
        for batch in (1, 16, 64, 256):
            raw = bench_fsync(directory, seconds)["fsyncs_per_s"]
            row = await bench_write_ready(directory, groups, batch, seconds)
            results["write_ready"].append(dict(row, raw_fsyncs_per_s=raw))
    results["concurrent"] = []
    for tasks in (1, 8, 64):
        raw = bench_fsync(directory, seconds)["fsyncs_per_s"]
        row = await bench_concurrent(directory, tasks, seconds)
        results["concurrent"].append(dict(row, raw_fsyncs_per_s=raw))
    results["reads"] = await bench_reads(directory)
    results["processes"] = [bench_processes(directory, n, seconds) for n in (1, 3)]
    results["wal_processes"] = [bench_processes(directory / "wal", n, seconds, _wal_loop)
                                for n in (1, 3)]
    return results


def report(r: dict) -> None:
    f = r["fsync"]
    print(f"dir: {r['dir']}")
    print(f"raw 4 KiB write+fsync: {f['fsyncs_per_s']:.0f}/s ({f['latency_ms']:.3f} ms)")
    print()
    print("write_ready (one fsynced txn per round), 128-byte entries")
    print(f"{'groups':>6} {'batch':>6} {'raw fsync/s':>12} {'txn/s':>7} {'txn/fsync':>10} "
          f"{'entries/s':>10} {'MiB/s':>6} {'ms/txn':>7}")
    for w in r["write_ready"]:
        print(f"{w['groups']:>6} {w['batch']:>6} {w['raw_fsyncs_per_s']:>12.0f} "
              f"{w['txn_per_s']:>7.0f} {w['txn_per_s'] / w['raw_fsyncs_per_s']:>10.2f} "
              f"{w['entries_per_s']:>10.0f} {w['mib_per_s']:>6.1f} {w['latency_ms']:>7.2f}")
    print()
    print("concurrent write_ready callers (1 entry each, own group), group commit")
    print(f"{'tasks':>6} {'raw fsync/s':>12} {'commits/s':>10} {'txn/s':>7} {'commits/txn':>12}")
    for c in r["concurrent"]:
        print(f"{c['tasks']:>6} {c['raw_fsyncs_per_s']:>12.0f} {c['commits_per_s']:>10.0f} "
              f"{c['txn_per_s']:>7.0f} {c['commits_per_txn']:>12.1f}")
    rd = r["reads"]
    print()
    print(f"hot reads: term() {rd['term_ns']:.0f} ns; entries() from cache "
          f"{rd['entries_cached_us']:.1f} us; 1000 entries from LMDB "
          f"{rd['entries_1000_disk_us']:.0f} us")
    print()
    print("processes committing at once (1 small fsynced txn after another, each)")
    print(f"{'procs':>6} {'txn/s each':>11} {'p50 ms':>7}")
    for pr in r["processes"]:
        print(f"{pr['processes']:>6} {pr['txn_per_s_each']:>11.0f} {pr['p50_ms']:>7.2f}")
    print()
    print("processes appending WAL frames at once (200 bytes, one fdatasync each)")
    print(f"{'procs':>6} {'frames/s each':>14} {'p50 ms':>7}")
    for pr in r["wal_processes"]:
        print(f"{pr['processes']:>6} {pr['txn_per_s_each']:>14.0f} {pr['p50_ms']:>7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="directory on the disk to measure (default: a temp dir)")
    ap.add_argument("--seconds", type=float, default=1.5, help="duration of each measurement")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    if args.dir:
        directory = Path(args.dir) / f"bench-storage-{os.getpid()}"
        directory.mkdir(parents=True)
    else:
        directory = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    try:
        results = trio.run(run, directory, args.seconds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)


if __name__ == "__main__":
    main()
