"""Wire tags and the hot-path codec of the raft core's value types.

Owns: tags 1-39 for `nokvpy.raft.types` (registered here, since the raft core must not know
about encoding) and the hand-written codec of `Message`, whose entries travel as a flat
`[term, index, type, data, term, index, type, data, ...]` array. Never imports anything of the
raft core but `types.py`.

Local message types (HUP, BEAT, ...) never cross the wire: decoding one is a DecodeError.
"""

from __future__ import annotations

import dataclasses

from nokvpy.protocol.base import wire_type
from nokvpy.raft.types import (
    LOCAL_MESSAGE_TYPES,
    ConfChange,
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    SnapshotMetadata,
)
from nokvpy.wire.errors import DecodeError
from nokvpy.wire.schema import decode_record, encode_record, register_custom

ENTRY_TAG = 1
MESSAGE_TAG = 6

wire_type(ENTRY_TAG)(Entry)
wire_type(2)(HardState)
wire_type(3)(ConfState)
wire_type(4)(SnapshotMetadata)
wire_type(5)(Snapshot)
wire_type(MESSAGE_TAG)(Message)
wire_type(7)(ConfChange)
wire_type(8)(ReadState)

_WIRE_MESSAGE_TYPES = {int(t): t for t in MessageType if t not in LOCAL_MESSAGE_TYPES}
_MESSAGE_FIELDS = 12


def encode_message(m: Message) -> list:
    flat: list = []
    for e in m.entries:
        flat += (e.term, e.index, e.type, e.data)
    snap = m.snapshot
    return [
        MESSAGE_TAG,
        m.type,
        m.to,
        m.frm,
        m.term,
        m.log_term,
        m.index,
        flat,
        m.commit,
        m.reject,
        m.reject_hint,
        None if snap is None else encode_record(snap),
        m.context,
    ]


def decode_message(v: list, budget: int) -> Message:
    if len(v) < _MESSAGE_FIELDS + 1:
        raise DecodeError(f"Message: expected {_MESSAGE_FIELDS} fields, got {len(v) - 1}")
    _, mt, to, frm, term, log_term, index, flat, commit, reject, hint, snap, ctx = v[:13]
    mtype = _WIRE_MESSAGE_TYPES.get(mt) if type(mt) is int else None
    if mtype is None:
        raise DecodeError(f"Message.type: {mt!r} is not a wire raft message type")
    if not (
        type(to) is int
        and type(frm) is int
        and type(term) is int
        and type(log_term) is int
        and type(index) is int
        and type(commit) is int
        and type(hint) is int
    ):
        raise DecodeError("Message: to/frm/term/log_term/index/commit/reject_hint must be int")
    if type(reject) is not bool:
        raise DecodeError(f"Message.reject: expected bool, got {type(reject).__name__}")
    if type(ctx) is not bytes:
        raise DecodeError(f"Message.context: expected bytes, got {type(ctx).__name__}")
    if type(flat) is not list or len(flat) % 4:
        raise DecodeError("Message.entries: expected a flat array of [term, index, type, data]")
    entries = []
    if flat:
        it = iter(flat)
        for t, i, ty, d in zip(it, it, it, it, strict=True):
            if type(t) is not int or type(i) is not int or type(ty) is not int or type(d) is not bytes:
                raise DecodeError(
                    f"Message.entries[{len(entries)}]: expected (int, int, int, bytes)"
                )
            entries.append(Entry(t, i, ty, d))
    snapshot = None
    if snap is not None:
        snapshot = decode_record(snap, budget)
        if type(snapshot) is not Snapshot:
            raise DecodeError(f"Message.snapshot: expected Snapshot, got {type(snapshot).__name__}")
    return Message(mtype, to, frm, term, log_term, index, entries, commit, reject, hint, snapshot, ctx)


_FAST_PATH_FIELDS = ["type", "to", "frm", "term", "log_term", "index", "entries", "commit",
                     "reject", "reject_hint", "snapshot", "context"]
# If the raft core changes Message, fall back to the (correct, slower) generic codec until the
# fast path is updated; tests/wire checks that the fast path is active.
FAST_PATH_ACTIVE = [f.name for f in dataclasses.fields(Message)] == _FAST_PATH_FIELDS
if FAST_PATH_ACTIVE:
    register_custom(Message, encode_message, decode_message)
