"""ReadIndex bookkeeping on the leader (Raft thesis section 6.4).

Owns: the queue of read requests waiting for a heartbeat quorum to confirm leadership
(`ReadOnlyOption.SAFE`) and the choice of read mode. With SAFE the leader records its commit
index, broadcasts a heartbeat tagged with the request context and answers once a quorum of
voters echoes that context. With LEASE_BASED the leader answers at once while its lease holds
(see `Raft.lease_valid` in core.py) and falls back to the SAFE round otherwise. Never sends
messages or touches the log; the core does both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from .types import Message


class ReadOnlyOption(IntEnum):
    SAFE = 0
    LEASE_BASED = 1


@dataclass(slots=True)
class ReadIndexStatus:
    req: Message
    index: int
    acks: dict[int, bool] = field(default_factory=dict)


class ReadOnly:
    __slots__ = ("option", "pending", "queue")

    def __init__(self, option: ReadOnlyOption) -> None:
        self.option = option
        # Invariant: queue holds exactly the keys of pending, in arrival order.
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, m: Message) -> None:
        ctx = m.context
        if ctx in self.pending:
            return
        self.pending[ctx] = ReadIndexStatus(m, index)
        self.queue.append(ctx)

    def recv_ack(self, node_id: int, ctx: bytes) -> dict[int, bool] | None:
        rs = self.pending.get(ctx)
        if rs is None:
            return None
        rs.acks[node_id] = True
        return rs.acks

    def advance(self, ctx: bytes) -> list[ReadIndexStatus]:
        """Pop every request up to and including `ctx`: a quorum ack of a later heartbeat
        confirms leadership for all earlier requests too."""
        try:
            i = self.queue.index(ctx)
        except ValueError:
            return []
        done = self.queue[: i + 1]
        del self.queue[: i + 1]
        return [self.pending.pop(c) for c in done]

    def last_pending_request_ctx(self) -> bytes:
        return self.queue[-1] if self.queue else b""
