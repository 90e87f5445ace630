"""Throughput of the pure raft core: 3 RawNodes in one process, no I/O, no sockets.

Each round the leader gets `batch` proposals, then every node handles one Ready (persist to
its MemoryStorage, collect messages, apply, advance) and the messages are delivered to their
targets' inboxes for the next round (a pipelined, lossless in-memory network). Reports
committed (applied on the leader) entries per second of wall time and CPU microseconds per
entry (time.process_time, all three nodes together).

    python benchmarks/bench_raft_core.py [--entries N] [--payload BYTES] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nokvpy.raft import Config, MemoryStorage, RawNode, StateType  # noqa: E402


def make_cluster(n: int = 3) -> dict[int, tuple[RawNode, MemoryStorage]]:
    ids = list(range(1, n + 1))
    nodes = {}
    for i in ids:
        st = MemoryStorage()
        rn = RawNode(Config(i, st, rng=random.Random(i)))
        rn.bootstrap(ids)
        nodes[i] = (rn, st)
    return nodes


def handle_ready(rn: RawNode, st: MemoryStorage) -> tuple[list, int]:
    rd = rn.ready()
    if rd.snapshot is not None:
        st.apply_snapshot(rd.snapshot)
    if rd.entries:
        st.append(rd.entries)
    if rd.hard_state is not None:
        st.set_hard_state(rd.hard_state)
    applied = len(rd.committed_entries)  # "apply": a no-op state machine
    rn.advance(rd)
    return rd.messages, applied


def run(total: int, batch: int, payload: int) -> dict:
    nodes = make_cluster()
    inbox: dict[int, list] = {i: [] for i in nodes}

    def round_() -> int:
        leader_applied = 0
        for i, (rn, st) in nodes.items():
            msgs = inbox[i]
            if msgs:
                inbox[i] = []
                for m in msgs:
                    rn.step(m)
            if rn.has_ready():
                out, applied = handle_ready(rn, st)
                for m in out:
                    inbox[m.to].append(m)
                if rn.raft.state == StateType.LEADER:
                    leader_applied += applied
        return leader_applied

    round_()  # persist and apply the bootstrap entries (a node won't campaign before that)
    leader = nodes[1][0]
    leader.campaign()
    while (
        leader.raft.state != StateType.LEADER or not leader.raft.committed_entry_in_current_term()
    ):
        round_()
    data = b"x" * payload
    committed = 0
    wall0 = time.perf_counter()
    cpu0 = time.process_time()
    proposed = 0
    propose = leader.propose
    while committed < total:
        if proposed < total:
            for _ in range(batch):
                propose(data)
            proposed += batch
        committed += round_()
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    return {
        "batch": batch,
        "entries": committed,
        "payload_bytes": payload,
        "wall_s": round(wall, 4),
        "entries_per_s": round(committed / wall),
        "cpu_us_per_entry": round(cpu / committed * 1e6, 3),
        # What one otherwise idle core sustains (wall figures suffer on a loaded machine).
        "entries_per_cpu_s": round(committed / cpu),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=200_000, help="entries for the batched run")
    ap.add_argument("--single-entries", type=int, default=20_000, help="entries, 1 per Ready")
    ap.add_argument("--payload", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results = [
        run(args.entries, 64, args.payload),
        run(args.single_entries, 1, args.payload),
    ]
    if args.json:
        print(json.dumps({"bench": "raft_core", "nodes": 3, "results": results}, indent=2))
    else:
        for r in results:
            print(
                f"batch={r['batch']:>3}  {r['entries']:>7} entries  {r['entries_per_s']:>9,} "
                f"entries/s wall  {r['entries_per_cpu_s']:>9,} entries/CPU-s  "
                f"{r['cpu_us_per_entry']:.2f} CPU us/entry  (payload {r['payload_bytes']} B, "
                f"{r['wall_s']} s)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
