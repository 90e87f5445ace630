"""Crash-test writer for WAL mode: writes deterministic raft batches until killed (test tool).

Owns: the WAL-mode writer loop and the resume/expectation logic shared by the writer process
and the test that kills it (tests/storage/test_wal_crash.py). Reuses the batch plan and the
reference model of `_crashwriter`. Never used by the store.

Run: `python -m nokvpy.storage._walcrashwriter DIR SEED GROUPS SEGMENT_BYTES`. The LMDB
environment is DIR/db and the WAL DIR/wal. In WAL mode a batch's entries and hard states are one
WAL frame (fsynced) and its compactions are LMDB records committed just before that frame, so
there is no batch marker: the batch number on disk is found from group 1's last index, which
every batch increases. The writer resumes after it, prints "ready <n>" and then
"committed <n>" (flushed) after each `write_ready()` returns.
"""

from __future__ import annotations

import copy
import sys

from nokvpy.storage._crashwriter import Model, plan_batch

MAP_SIZE = 256 << 10


def durable_batches(last_index_of_group_1: int, seed: int, groups: int) -> Model:
    """The model after the batch whose log ends where group 1's log on disk ends."""
    model = Model(seed, groups)
    while model.groups[1].last < last_index_of_group_1:
        model.advance_to(model.batches + 1)
    if model.groups[1].last != last_index_of_group_1:
        raise AssertionError(
            f"group 1 ends at {last_index_of_group_1}: no batch ends there "
            f"(batch {model.batches} ends at {model.groups[1].last})")
    return model


def next_compactions(model: Model) -> dict[int, int]:
    """group -> index the next batch compacts to (its LMDB part may be on disk without it)."""
    views = {gid: g.view() for gid, g in model.groups.items()}
    return {p.group_id: p.compact_to
            for p in plan_batch(model.seed, model.batches + 1, views) if p.compact_to is not None}


def with_compaction(model: Model, gid: int, index: int) -> Model:
    """A copy of `model` with group `gid` compacted to `index`."""
    m = copy.deepcopy(model)
    g = m.groups[gid]
    g.trunc_term = g.log[index].term
    for i in range(g.first, index + 1):
        del g.log[i]
    g.trunc_index = index
    return m


async def _run(path: str, seed: int, groups: int, segment_bytes: int) -> None:
    import os

    from nokvpy.storage import Env, RaftLogStore, WriteBatch

    env = Env.open(os.path.join(path, "db"), map_size=MAP_SIZE)
    store = RaftLogStore.open_wal(env, os.path.join(path, "wal"), segment_bytes=segment_bytes)
    model = durable_batches(store.group(1).last_index(), seed, groups)
    print(f"ready {model.batches}", flush=True)
    while True:
        n = model.batches + 1
        views = {gid: g.view() for gid, g in model.groups.items()}
        batch = WriteBatch()
        items = []
        for p in plan_batch(seed, n, views):
            # The compaction may already be on disk (LMDB part of a batch whose frame was lost).
            if p.compact_to is not None and store.group(p.group_id).first_index() <= p.compact_to:
                store.stage_compact(batch, p.group_id, p.compact_to)
            items.append((p.group_id, p.hard_state, p.entries, None))
        await store.write_ready(items, batch)
        model.advance_to(n)
        print(f"committed {n}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4:
        raise SystemExit(
            "usage: python -m nokvpy.storage._walcrashwriter DIR SEED GROUPS SEGMENT_BYTES")
    import trio

    trio.run(_run, args[0], int(args[1]), int(args[2]), int(args[3]))


if __name__ == "__main__":
    main()
