"""ReadIndex bookkeeping on the leader (Raft thesis section 6.4).

Owns: the queue of read requests waiting for a heartbeat quorum to confirm leadership
(`ReadOnlyOption.SAFE`), the acknowledged heartbeat rounds, and the choice of read mode.
Never sends messages, never touches the log and never owns the round counter (the core keeps
it, so it survives term changes); it only does the bookkeeping and quorum arithmetic.

SAFE rounds: the leader numbers its heartbeat rounds itself (`Raft.read_round`, never reset)
and carries the round in the heartbeat's `context` as leader-private bytes (`encode_round`);
followers echo it. A read queued while round r is the newest needs a round >= r + 1, i.e. one
started at or after its arrival. An answer for round r from node n raises acked[n] to
max(acked[n], r); the leader acks each round it starts. A read needing round r is confirmed
once a quorum of voters acked a round >= r, so a quorum ack of a later round confirms all
earlier reads, and an answer to a round started before a read arrived never confirms it (a
delayed answer from an earlier round cannot vouch for a later read, on a leader that may have
been deposed in between). The caller's context only routes the answer back: two pending reads
with the same context are both kept and answered separately (contexts from different nodes
collide, as each driver numbers its own from 1).

LEASE_BASED: the leader answers at once while its lease holds (see `Raft.lease_valid` in
core.py) and falls back to the SAFE round otherwise.

`UNSAFE_MATCH_BY_CONTEXT` (tests only; the driver sets it from `NOKV_UNSAFE_READINDEX=1`,
tests and the simulator set it directly) restores the old matching by caller context, so the
simulator can show that it catches the collision.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

from .types import Message

UNSAFE_MATCH_BY_CONTEXT = False

_ROUND = struct.Struct(">Q")


def encode_round(r: int) -> bytes:
    return _ROUND.pack(r)


def decode_round(ctx: bytes) -> int | None:
    """The round in a heartbeat (answer) context, or None if it carries none."""
    if len(ctx) != _ROUND.size:
        return None
    return _ROUND.unpack(ctx)[0]


class ReadOnlyOption(IntEnum):
    SAFE = 0
    LEASE_BASED = 1


@dataclass(slots=True)
class ReadIndexStatus:
    req: Message
    index: int  # the leader's commit index when the read arrived
    round: int  # the heartbeat round that must be acked by a quorum
    acks: dict[int, bool] = field(default_factory=dict)  # unsafe mode only


class ReadOnly:
    __slots__ = ("option", "queue", "acked", "unsafe")

    def __init__(self, option: ReadOnlyOption) -> None:
        self.option = option
        # Invariant: arrival order; rounds are non-decreasing along the queue.
        self.queue: deque[ReadIndexStatus] = deque()
        # Highest round each node answered this term (the leader's own entry included).
        self.acked: dict[int, int] = {}
        self.unsafe = UNSAFE_MATCH_BY_CONTEXT

    def add_request(self, index: int, m: Message, round_: int, self_id: int) -> bytes:
        """Queue a read that needs `round_` (a round the leader starts now and acks itself);
        returns the context to put on the round's heartbeats."""
        if self.unsafe:
            if any(rs.req.context == m.context for rs in self.queue):
                return m.context  # the old dedup by context
            rs = ReadIndexStatus(m, index, round_)
            rs.acks[self_id] = True
            self.queue.append(rs)
            return m.context
        self.queue.append(ReadIndexStatus(m, index, round_))
        self.acked[self_id] = round_
        return encode_round(round_)

    def heartbeat_context(self) -> bytes:
        """Context for a periodic heartbeat: the newest pending round (b"" with no reads)."""
        if not self.queue:
            return b""
        last = self.queue[-1]
        return last.req.context if self.unsafe else encode_round(last.round)

    def recv_ack(self, node_id: int, ctx: bytes) -> bool:
        """Record a heartbeat answer; True if it may confirm pending reads."""
        if self.unsafe:
            hit = False
            for rs in self.queue:
                if rs.req.context == ctx:
                    rs.acks[node_id] = True
                    hit = True
            return hit
        r = decode_round(ctx)
        if r is None:
            return False
        if r > self.acked.get(node_id, 0):
            self.acked[node_id] = r
        # Even an ack that raises nothing may confirm reads if the quorum shrank since.
        return bool(self.queue)

    def advance(self, quorum_round) -> list[ReadIndexStatus]:
        """Pop, in arrival order, every read a quorum has confirmed. `quorum_round(acked)` is
        the largest round a quorum of voters acked (ProgressTracker.quorum_value)."""
        q = self.queue
        if not q:
            return []
        if self.unsafe:
            return self._advance_by_context(quorum_round)
        done_to = quorum_round(self.acked)
        out = []
        while q and q[0].round <= done_to:
            out.append(q.popleft())
        return out

    def _advance_by_context(self, quorum_round) -> list[ReadIndexStatus]:
        # Old behaviour: the newest request whose context has a quorum of acks confirms it
        # and everything queued before it.
        q = self.queue
        for i in range(len(q) - 1, -1, -1):
            acks = {nid: 1 for nid in q[i].acks}
            if quorum_round(acks) >= 1:
                return [q.popleft() for _ in range(i + 1)]
        return []

    def pending(self) -> int:
        return len(self.queue)
