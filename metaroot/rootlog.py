"""The durable side of metaroot: the committed event log, its checkpoint, and the stamp.

Owns: the LMDB tables of one metaroot peer besides its raft log:

| database    | key                      | value                                         |
|-------------|--------------------------|-----------------------------------------------|
| root_events | root index u64 BE        | encoded CommittedEvent (the retained tail)    |
| root_meta   | b"cluster_id"            | utf-8 cluster id (stamped on first start)     |
|             | b"members"               | JSON metaroot membership (metaroot.members)   |
|             | b"peers"                 | JSON {peer id: address}: founding peers of a  |
|             |                          | data dir written before b"members" (read only)|
|             | b"removed"               | why this peer may not serve: it was removed   |
|             | b"checkpoint"            | encoded RootCheckpoint (state at some token)  |
|             | b"applied"               | raft index of the last applied entry, u64 BE  |

State after a restart = checkpoint + every retained event after the checkpoint's token; the
raft applied index is written in the same transaction as the events it produced, so replay
resumes exactly where apply stopped. Never decides what an event means (metaroot.state does).
"""

from __future__ import annotations

import struct

from metaroot.state import RootState
from nokvpy.protocol import CommittedEvent
from nokvpy.storage import Env, WriteBatch
from nokvpy.wire import decode, encode

ROOT_EVENTS = "root_events"
ROOT_META = "root_meta"
ROOT_DBS = (ROOT_EVENTS, ROOT_META)

_U64 = struct.Struct(">Q")


class StampError(Exception):
    """The data directory belongs to another cluster."""


def stamp(env: Env, cluster_id: str, members_json: str) -> bool:
    """Stamp a fresh data dir with the cluster id and the first membership record (one
    transaction), or check that an existing one belongs to `cluster_id` (one clear line).
    True when the data dir was fresh. The membership of an existing data dir is its own
    (metaroot.members), whatever the command line says."""
    existing = env.get(ROOT_META, b"cluster_id")
    if existing is None:
        batch = WriteBatch()
        batch.put(ROOT_META, b"cluster_id", cluster_id.encode())
        batch.put(ROOT_META, b"members", members_json.encode())
        env.commit_sync(batch)
        return True
    if existing.decode() != cluster_id:
        raise StampError(f"data dir {env.path} belongs to cluster {existing.decode()!r}, "
                         f"not {cluster_id!r}")
    return False


def stage_event(batch: WriteBatch, ce: CommittedEvent) -> None:
    batch.put(ROOT_EVENTS, _U64.pack(ce.token.index), encode(ce))


def stage_applied(batch: WriteBatch, applied: int) -> None:
    batch.put(ROOT_META, b"applied", _U64.pack(applied))


def stage_checkpoint(batch: WriteBatch, state: RootState) -> None:
    batch.put(ROOT_META, b"checkpoint", encode(state.to_checkpoint()))


def stage_compact(batch: WriteBatch, keep_from: int) -> None:
    """Drop retained events with index < keep_from."""
    batch.delete_range(ROOT_EVENTS, _U64.pack(0), _U64.pack(keep_from))


def stage_reset(batch: WriteBatch) -> None:
    batch.delete_range(ROOT_EVENTS, _U64.pack(0), None)


def load(env: Env) -> tuple[RootState, int, int]:
    """(state, raft applied index, first retained event index) from disk."""

    def read(txn):
        cp = txn.get(b"checkpoint", db=env.db(ROOT_META))
        applied = txn.get(b"applied", db=env.db(ROOT_META))
        state = RootState.from_checkpoint(decode(cp)) if cp else RootState()
        first = 0
        events = []
        cur = txn.cursor(db=env.db(ROOT_EVENTS))
        if cur.first():
            first = _U64.unpack(cur.key())[0]
        if cur.set_range(_U64.pack(state.token.index + 1)):
            for _, v in cur:
                events.append(decode(v))
        return state, events, (_U64.unpack(applied)[0] if applied else 0), first

    state, events, applied, first = env.read(read)
    state = state.apply_all((ce.token, ce.event) for ce in events)
    return state, applied, first or state.token.index + 1


def events_after(env: Env, after: int, limit: int) -> list[CommittedEvent]:
    def read(txn):
        out = []
        cur = txn.cursor(db=env.db(ROOT_EVENTS))
        if cur.set_range(_U64.pack(after + 1)):
            for _, v in cur:
                out.append(decode(v))
                if len(out) >= limit:
                    break
        return out

    return env.read(read)
