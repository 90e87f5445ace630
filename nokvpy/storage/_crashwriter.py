"""Crash-test writer: writes deterministic raft batches until killed (test tool).

Owns: the batch plan shared by the writer process and the test that kills it, and a reference
model of what the log must look like after any number of batches. Never used by the store.

Run: `python -m nokvpy.storage._crashwriter DIR SEED [GROUPS]`. It resumes after the last
durable batch (recorded in the KV table in the same transaction), prints "ready <n>" and then
"committed <n>" (flushed) after each `write_ready()` returns. Batch n's content is a pure
function of (seed, n, the log before it), so the parent can replay batches into `Model` and
compare the reopened log with the model after the batch number found on disk.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field

from nokvpy.raft.types import Entry, HardState

MARKER_KEY = b"crash/batch"
MAP_SIZE = 256 << 10  # small: the map grows (set_mapsize) while being killed


@dataclass(slots=True)
class GroupPlan:
    group_id: int
    entries: list[Entry]
    hard_state: HardState
    compact_to: int | None  # compact before appending (at an index of the previous log)


def plan_batch(seed: int, batch_no: int, views: dict[int, tuple[int, int, int]]) -> list[GroupPlan]:
    """The batch `batch_no` given each group's (first_index, last_index, last_term)."""
    rng = random.Random(seed * 1_000_003 + batch_no)
    plans = []
    for gid in sorted(views):
        first, last, last_term = views[gid]
        if rng.random() < 0.5 and last >= first:  # overwrite a short conflicting suffix
            start = max(first, last - rng.randint(0, 2))
            term = last_term + 1
        else:
            start, term = last + 1, max(last_term, 1)
        n = max(rng.randint(1, 6), last - start + 2)  # the log always grows
        pad = rng.randint(0, 160)
        entries = [
            Entry(term, i, 0, f"s{seed}b{batch_no}g{gid}i{i}t{term}:".encode() + b"p" * pad)
            for i in range(start, start + n)
        ]
        compact_to = None
        if rng.random() < 0.08 and last - 3 >= first:
            compact_to = rng.randint(first, last - 3)
        plans.append(GroupPlan(gid, entries, HardState(term, gid, start + n - 1), compact_to))
    return plans


@dataclass
class GroupModel:
    trunc_index: int = 0
    trunc_term: int = 0
    log: dict[int, Entry] = field(default_factory=dict)
    hard_state: HardState = field(default_factory=HardState)

    @property
    def first(self) -> int:
        return self.trunc_index + 1

    @property
    def last(self) -> int:
        return self.trunc_index + len(self.log)

    def view(self) -> tuple[int, int, int]:
        last = self.last
        return self.first, last, self.log[last].term if self.log else self.trunc_term


class Model:
    """What the persisted logs must be after `batches` batches."""

    def __init__(self, seed: int, groups: int):
        self.seed = seed
        self.batches = 0
        self.groups = {gid: GroupModel() for gid in range(1, groups + 1)}

    def advance_to(self, batch_no: int) -> None:
        while self.batches < batch_no:
            n = self.batches + 1
            views = {gid: g.view() for gid, g in self.groups.items()}
            for p in plan_batch(self.seed, n, views):
                g = self.groups[p.group_id]
                if p.compact_to is not None:
                    g.trunc_term = g.log[p.compact_to].term
                    for i in range(g.first, p.compact_to + 1):
                        del g.log[i]
                    g.trunc_index = p.compact_to
                for i in range(p.entries[0].index, g.last + 1):
                    del g.log[i]
                for e in p.entries:
                    g.log[e.index] = e
                g.hard_state = p.hard_state
            self.batches = n


async def _run(path: str, seed: int, groups: int) -> None:
    from nokvpy.storage import KV, Env, RaftLogStore, WriteBatch

    env = Env.open(path, map_size=MAP_SIZE)
    store = RaftLogStore(env)
    kv = KV(env)
    done = int(kv.get(MARKER_KEY) or b"0")
    print(f"ready {done}", flush=True)
    batch_no = done
    while True:
        batch_no += 1
        views = {}
        for gid in range(1, groups + 1):
            g = store.group(gid)
            views[gid] = (g.first_index(), g.last_index(), g.term(g.last_index()))
        batch = WriteBatch()
        items = []
        for p in plan_batch(seed, batch_no, views):
            if p.compact_to is not None:
                store.stage_compact(batch, p.group_id, p.compact_to)
            items.append((p.group_id, p.hard_state, p.entries, None))
        kv.stage_put(batch, MARKER_KEY, str(batch_no).encode())
        await store.write_ready(items, batch)
        print(f"committed {batch_no}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        raise SystemExit("usage: python -m nokvpy.storage._crashwriter DIR SEED [GROUPS]")
    import trio

    trio.run(_run, args[0], int(args[1]), int(args[2]) if len(args) == 3 else 3)


if __name__ == "__main__":
    main()
