"""What idle regions cost: CPU of the stores of a cluster holding N regions and no traffic.

Command: `python benchmarks/bench_idle.py --regions 300 --idle 20 [--hibernate-ticks N]
[--json] [--dir DIR]` (`--hibernate-ticks 0`: regions never hibernate, for an A/B).
Starts a local cluster (`nokv cluster up`, 1 metaroot, 1 coordinator, 3 stores, replication
3) in a temporary directory (or DIR), splits it into N regions (at keys r000001, r000002,
...), waits `--settle` seconds, then reads every store's CPU seconds (utime + stime from
/proc/PID/stat) before and after `--idle` seconds with no client traffic. Prints the stores'
CPU as a percentage of one core (each and together) and per region; stops the cluster (its
directory is removed unless --dir was given). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from nokvpy.cli.backup_cmd import _split as split_at
from nokvpy.client import Client
from nokvpy.cluster.local import LocalCluster

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


async def split_into(client: Client, regions: int, say) -> float:
    t0 = time.monotonic()
    for i in range(1, regions):
        await split_at(client, f"r{i:06d}".encode())  # nokv restore's split, leader moves retried
        if i % 50 == 0:
            say(f"{i + 1} regions ({time.monotonic() - t0:.0f}s)")
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regions", type=int, default=300, help="regions to create (default 300)")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds measured (default 20)")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds to wait after the last split (default 10)")
    ap.add_argument("--hibernate-ticks", type=int, default=None,
                    help="the stores' --hibernate-ticks (default: theirs)")
    ap.add_argument("--dir", default=None, help="cluster directory (default: a temporary one)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()

    def say(text: str) -> None:
        print(f"bench_idle: {text}", file=sys.stderr, flush=True)

    tmp = None if args.dir else tempfile.mkdtemp(prefix="nokv-idle-")
    directory = Path(args.dir or tmp) / ("" if args.dir else "cluster")
    nokv = [sys.executable, "-m", "nokvpy.cli.main"]
    try:
        cluster = LocalCluster(directory)
        spec = cluster.create()
        if args.hibernate_ticks is not None:
            for proc in spec.of_kind("store"):
                proc.extra_args = [*proc.extra_args, "--hibernate-ticks", str(args.hibernate_ticks)]
            cluster.save(spec)
        subprocess.run([*nokv, "cluster", "up", "--dir", str(directory), "--json"], check=True,
                       stdout=subprocess.DEVNULL)

        async def build() -> float:
            async with Client.from_cluster_dir(directory, timeout=30.0, role="admin") as client:
                return await split_into(client, args.regions, say)

        split_s = trio.run(build)
        say(f"{args.regions} regions in {split_s:.0f}s; settling {args.settle:g}s")
        time.sleep(args.settle)
        stores = {p.name: cluster.pid(p.name) for p in spec.of_kind("store")}
        before = {n: cpu_seconds(pid) for n, pid in stores.items()}
        t0 = time.monotonic()
        time.sleep(args.idle)
        wall = time.monotonic() - t0
        after = {n: cpu_seconds(pid) for n, pid in stores.items()}
        per = {n: 100.0 * (after[n] - before[n]) / wall for n in stores}
        total = sum(per.values())
        out = {"regions": args.regions, "hibernate_ticks": args.hibernate_ticks,
               "idle_s": round(wall, 1), "split_s": round(split_s, 1),
               "store_cpu_percent": {n: round(v, 2) for n, v in per.items()},
               "stores_cpu_percent_total": round(total, 2),
               "cpu_us_per_region_second": round(1e6 * total / 100.0 / args.regions, 1)}
        if args.json:
            print(json.dumps(out))
        else:
            hib = "default" if args.hibernate_ticks is None else args.hibernate_ticks
            print(f"{args.regions} idle regions (hibernate ticks {hib}), 3 stores, {wall:.1f}s: "
                  f"stores use {total:.1f} % "
                  f"of one core together ({', '.join(f'{n} {v:.1f} %' for n, v in per.items())}); "
                  f"{out['cpu_us_per_region_second']} us of CPU per region per second")
        return 0
    finally:
        subprocess.run([*nokv, "cluster", "down", "--dir", str(directory)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
