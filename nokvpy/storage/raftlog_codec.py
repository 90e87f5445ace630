"""The on-disk encoding of raft logs: LMDB records and write-ahead log items.

Owns: the compact `struct` formats of entries, hard states, truncation boundaries, snapshot
metadata, conf states, void marks and LSN-stamped hard states (the `raft_log` and
`raft_state` databases, layout in `schema.py`), and of the WAL items (entries and hard states
of a group) a frame holds. Pure functions and constants: never opens a database or a file,
never holds state, never imports msgpack (values are encoded here with `struct`).
"""

from __future__ import annotations

import struct
from typing import Any

from nokvpy.raft.types import ConfState, Entry, HardState, SnapshotMetadata
from nokvpy.storage.errors import CorruptLogError

KEY = struct.Struct(">QQ")  # group id, index
GID = struct.Struct(">Q")
ENT = struct.Struct(">QB")  # term, type; data follows
ENT_SIZE = ENT.size
HS = struct.Struct(">QQQ")  # term, vote, commit
TRUNC = struct.Struct(">QQ")  # index, term
SNAP = struct.Struct(">QQII")  # index, term, #voters, #learners; ids follow
CONF = struct.Struct(">QII")  # index the conf state is valid at, #voters, #learners

TAG_HS = b"h"
TAG_TRUNC = b"t"
TAG_SNAP = b"s"
TAG_CONF = b"c"
TAG_VOID = b"v"
HS_LSN = struct.Struct(">QQQQ")  # term, vote, commit, lsn (WAL mode)
LSN = struct.Struct(">Q")

# WAL frame items: kind, group id; then entries (first index, count; per entry term, type,
# data length, data) or a hard state (term, vote, commit).
ITEM = struct.Struct(">BQ")
ITEM_ENTRIES = 1
ITEM_HS = 2
EHEAD = struct.Struct(">QI")
EENT = struct.Struct(">QBI")
MAX_GID = (1 << 64) - 1

def log_key(group_id: int, index: int) -> bytes:
    return KEY.pack(group_id, index)


def group_lo(group_id: int) -> bytes:
    return KEY.pack(group_id, 0)


def group_hi(group_id: int) -> bytes | None:
    return GID.pack(group_id + 1) if group_id < MAX_GID else None


def encode_ids(voters: tuple[int, ...], learners: tuple[int, ...]) -> bytes:
    n = len(voters) + len(learners)
    return struct.pack(f">{n}Q", *voters, *learners) if n else b""


def encode_snapshot_meta(meta: SnapshotMetadata) -> bytes:
    cs = meta.conf_state
    head = SNAP.pack(meta.index, meta.term, len(cs.voters), len(cs.learners))
    return head + encode_ids(cs.voters, cs.learners)


def decode_snapshot_meta(raw: bytes) -> SnapshotMetadata:
    index, term, nv, nl = SNAP.unpack_from(raw)
    ids = struct.unpack_from(f">{nv + nl}Q", raw, SNAP.size)
    if len(raw) != SNAP.size + 8 * (nv + nl):
        raise CorruptLogError(f"snapshot metadata record has {len(raw)} bytes")
    return SnapshotMetadata(index, term, ConfState(tuple(ids[:nv]), tuple(ids[nv:])))


def encode_conf(index: int, cs: ConfState) -> bytes:
    return CONF.pack(index, len(cs.voters), len(cs.learners)) + encode_ids(
        cs.voters, cs.learners
    )


def decode_conf(raw: bytes) -> tuple[int, ConfState]:
    index, nv, nl = CONF.unpack_from(raw)
    if len(raw) != CONF.size + 8 * (nv + nl):
        raise CorruptLogError(f"conf state record has {len(raw)} bytes")
    ids = struct.unpack_from(f">{nv + nl}Q", raw, CONF.size)
    return index, ConfState(tuple(ids[:nv]), tuple(ids[nv:]))


def decode_entry(index: int, raw: bytes) -> Entry:
    term, typ = ENT.unpack_from(raw)
    return Entry(term, index, typ, raw[ENT_SIZE:])



def decode_wal_items(lsn: int, payload: bytes) -> list[tuple[int, int, Any]]:
    """The (group id, kind, value) items of one WAL frame; value is a list of entries or a
    HardState. Raises CorruptLogError on anything malformed."""
    out: list[tuple[int, int, Any]] = []
    off, n = 0, len(payload)
    try:
        while off < n:
            kind, gid = ITEM.unpack_from(payload, off)
            off += ITEM.size
            if kind == ITEM_HS:
                out.append((gid, kind, HardState(*HS.unpack_from(payload, off))))
                off += HS.size
            elif kind == ITEM_ENTRIES:
                first, count = EHEAD.unpack_from(payload, off)
                off += EHEAD.size
                ents: list[Entry] = []
                for i in range(count):
                    term, typ, size = EENT.unpack_from(payload, off)
                    off += EENT.size
                    if off + size > n:
                        raise CorruptLogError(f"WAL frame {lsn}: entry data runs past the frame")
                    ents.append(Entry(term, first + i, typ, payload[off:off + size]))
                    off += size
                if not ents:
                    raise CorruptLogError(f"WAL frame {lsn}: empty entries item")
                out.append((gid, kind, ents))
            else:
                raise CorruptLogError(f"WAL frame {lsn}: unknown item kind {kind}")
    except struct.error as exc:
        raise CorruptLogError(f"WAL frame {lsn}: truncated item: {exc}") from None
    return out


def encode_wal_hard_state(group_id: int, hs: HardState) -> bytes:
    """A WAL item restating a group's hard state."""
    return ITEM.pack(ITEM_HS, group_id) + HS.pack(hs.term, hs.vote, hs.commit)


def encode_wal_entries(parts: list[bytes], group_id: int, entries: list[Entry]) -> None:
    """Append the WAL item of a group's contiguous `entries` to a frame's `parts`."""
    parts.append(ITEM.pack(ITEM_ENTRIES, group_id) + EHEAD.pack(entries[0].index, len(entries)))
    pack = EENT.pack
    for e in entries:
        parts.append(pack(e.term, e.type, len(e.data)))
        parts.append(e.data)
