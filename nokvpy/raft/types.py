"""Value types shared by the raft core, its storage and its transport.

Owns: the shapes of entries, messages, hard state, membership and snapshots, and the read-only
`Storage` protocol the core reads its log through. Never does I/O, never imports msgpack, trio
or lmdb: `nokvpy.wire` encodes these types and `nokvpy.storage` persists them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

NONE = 0  # "no node": ids are positive integers


class MessageType(IntEnum):
    # Local messages: never leave the node.
    HUP = 0  # start an election
    BEAT = 1  # leader: send heartbeats
    CHECK_QUORUM = 2
    UNREACHABLE = 3
    SNAP_STATUS = 4
    # Wire messages.
    PROP = 10  # proposal forwarded from a follower to the leader
    APP = 11
    APP_RESP = 12
    VOTE = 13
    VOTE_RESP = 14
    PRE_VOTE = 15
    PRE_VOTE_RESP = 16
    SNAP = 17
    HEARTBEAT = 18
    HEARTBEAT_RESP = 19
    TRANSFER_LEADER = 20
    TIMEOUT_NOW = 21
    READ_INDEX = 22
    READ_INDEX_RESP = 23
    HIBERNATE = 24  # leader: "nothing is left to do, may we all stop ticking?" (core.py)
    HIBERNATE_RESP = 25


LOCAL_MESSAGE_TYPES = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.CHECK_QUORUM,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
    }
)


class EntryType(IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class ConfChangeType(IntEnum):
    ADD_NODE = 0  # add as voter, or promote a learner
    REMOVE_NODE = 1
    ADD_LEARNER = 2


class StateType(IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


@dataclass(slots=True)
class Entry:
    term: int
    index: int
    type: int = EntryType.NORMAL
    data: bytes = b""


@dataclass(slots=True)
class HardState:
    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(slots=True, frozen=True)
class ConfState:
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


@dataclass(slots=True, frozen=True)
class SnapshotMetadata:
    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(slots=True, frozen=True)
class Snapshot:
    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    data: bytes = b""

    def is_empty(self) -> bool:
        return self.metadata.index == 0


_CC = struct.Struct(">BQ")


@dataclass(slots=True, frozen=True)
class ConfChange:
    """A single-step membership change, carried in an EntryType.CONF_CHANGE entry."""

    type: ConfChangeType
    node_id: int
    context: bytes = b""

    def encode(self) -> bytes:
        return _CC.pack(int(self.type), self.node_id) + self.context

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        if len(data) < _CC.size:
            raise ValueError(f"conf change too short: {len(data)} bytes")
        kind, node_id = _CC.unpack_from(data)
        return cls(ConfChangeType(kind), node_id, bytes(data[_CC.size :]))


@dataclass(slots=True)
class Message:
    type: MessageType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


@dataclass(slots=True, frozen=True)
class ReadState:
    """A ReadIndex answer: once `index` is applied, a read tagged `request_ctx` may be served."""

    index: int
    request_ctx: bytes


@dataclass(slots=True, frozen=True)
class SoftState:
    lead: int
    raft_state: StateType


class CompactedError(Exception):
    """The requested index is older than the first retained entry (compacted away)."""


class UnavailableError(Exception):
    """The requested index is newer than the last entry in storage."""


class SnapshotTemporarilyUnavailableError(Exception):
    """Storage is preparing a snapshot; retry later."""


class Storage(Protocol):
    """Read-only view of the persisted log that the core reads through.

    Indices: entries(lo, hi) returns [lo, hi). first_index() is the first entry still
    available (snapshot index + 1); last_index() the last one; term(first_index() - 1) must
    answer the snapshot term.
    """

    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]: ...

    def term(self, index: int) -> int: ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot: ...


class SnapshotOutOfDateError(Exception):
    """The snapshot offered is not newer than the one storage already holds."""


class ProposalDroppedError(Exception):
    """The proposal was not appended: no leader known, a leader transfer is under way, a conf
    change is already pending, forwarding is disabled, or the uncommitted-size limit is hit.

    `leader_hint` is the node this node believes leads (NONE when unknown): retry there.
    """

    def __init__(self, reason: str, leader_hint: int = NONE) -> None:
        super().__init__(f"proposal dropped: {reason} (leader hint {leader_hint})")
        self.reason = reason
        self.leader_hint = leader_hint


class NotLeaderError(ProposalDroppedError):
    """`RawNode.propose_at` on a node that is not the leader (`leader_hint`: the one it
    knows of, NONE when unknown)."""

    def __init__(self, leader_hint: int = NONE) -> None:
        super().__init__("not the leader", leader_hint)


class NotAppendedError(ProposalDroppedError):
    """`RawNode.propose_at`: the leader accepted the proposal without appending an entry."""

    def __init__(self, leader_hint: int = NONE) -> None:
        super().__init__("not appended", leader_hint)


RESPONSE_MESSAGE_TYPES = frozenset(
    {
        MessageType.APP_RESP,
        MessageType.VOTE_RESP,
        MessageType.PRE_VOTE_RESP,
        MessageType.HEARTBEAT_RESP,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
    }
)
