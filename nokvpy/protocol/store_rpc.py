"""Requests and replies of a store: KV operations and admin (DESIGN 5, 8). Tags 400-599.

Every refusal is a remote error of kind `rejected` whose reason is an `AdmissionReason` name
and whose `details["admission"]` is the full `Admission` record (leader hint, current epoch,
current descriptor). A write whose outcome is unknown (deadline passed after proposing) is a
remote error of kind `timeout` with reason `outcome_unknown`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from nokvpy.protocol.base import wire_type
from nokvpy.protocol.records import RegionEpoch

MAX_KEY_SIZE = 511  # LMDB's key limit: user keys are stored as LMDB keys
MAX_VALUE_SIZE = 1 << 20


class ReadMode(IntEnum):
    LINEARIZABLE = 1  # ReadIndex on the leader (lease-based when check-quorum holds)
    FOLLOWER = 2  # ReadIndex through a follower, served from its applied state
    BOUNDED_STALE = 3  # local applied state within an index / age budget


@wire_type(400)
@dataclass(slots=True, frozen=True)
class KvContext:
    region_id: int
    epoch: RegionEpoch
    store_id: int
    read_mode: ReadMode = ReadMode.LINEARIZABLE
    max_stale_index: int = 0
    max_stale_ms: int = 0


@wire_type(401)
@dataclass(slots=True, frozen=True)
class GetRequest:
    ctx: KvContext
    key: bytes


@wire_type(402)
@dataclass(slots=True, frozen=True)
class GetReply:
    value: bytes | None
    read_index: int = 0
    stale_by_index: int = 0  # bounded-stale reads: how far behind commit the answer was
    stale_by_ms: int = 0


@wire_type(403)
@dataclass(slots=True, frozen=True)
class BatchGetRequest:
    ctx: KvContext
    keys: list[bytes]


@wire_type(404)
@dataclass(slots=True, frozen=True)
class BatchGetReply:
    values: list[bytes | None]
    read_index: int = 0


@wire_type(405)
@dataclass(slots=True, frozen=True)
class ScanRequest:
    ctx: KvContext
    start_key: bytes
    end_key: bytes = b""  # clipped to the region's end
    limit: int = 100


@wire_type(406)
@dataclass(slots=True, frozen=True)
class ScanReply:
    pairs: list[tuple[bytes, bytes]]
    more: bool  # the region holds more keys in range past the limit
    read_index: int = 0


@wire_type(407)
@dataclass(slots=True, frozen=True)
class PutRequest:
    ctx: KvContext
    key: bytes
    value: bytes


@wire_type(408)
@dataclass(slots=True, frozen=True)
class DeleteRequest:
    ctx: KvContext
    key: bytes


@wire_type(409)
@dataclass(slots=True, frozen=True)
class CasRequest:
    """Set `key` to `new_value` (None = delete) iff its value equals `expected`
    (None = the key must be absent)."""

    ctx: KvContext
    key: bytes
    expected: bytes | None
    new_value: bytes | None


@wire_type(410)
@dataclass(slots=True, frozen=True)
class WriteReply:
    applied_index: int
    succeeded: bool = True  # CAS: whether the predicate held
    current: bytes | None = None  # CAS: the value seen when the predicate failed


# ---- admin (500-599) -------------------------------------------------------------------


@wire_type(500)
@dataclass(slots=True, frozen=True)
class ExecutionStatusRequest:
    region_id: int = 0
    transition_id: str = ""


@wire_type(501)
@dataclass(slots=True, frozen=True)
class ExecutionStatusReply:
    body: dict[str, object]


@wire_type(502)
@dataclass(slots=True, frozen=True)
class AdminRequest:
    """A topology command for the region leader. `op`: split | merge | add_peer |
    remove_peer | transfer_leader | tombstone | compensate | drive_forward."""

    op: str
    region_id: int
    split_key: bytes = b""
    other_region_id: int = 0
    store_id: int = 0
    peer_id: int = 0
    transition_id: str = ""
    wait: bool = True
    forwarded: bool = False  # already forwarded once to the leader's store (never again)
    reason: str = ""  # compensate / drive_forward: the failure evidence being reported


@wire_type(503)
@dataclass(slots=True, frozen=True)
class AdminReply:
    transition_id: str
    outcome: str
    stage: str
    detail: str = ""


@wire_type(504)
@dataclass(slots=True, frozen=True)
class OutboxRequest:
    """The operator path of a store's publish outbox (raftstore.outbox, `nokv outbox`).

    `action`: "list" (pending and blocked entries), "retry" (move blocked entry `seq` back
    into the outbox: the publisher tries it again), or "resolve" (remove blocked entry `seq`
    for good; `resolution` "published" | "abandoned" and a `reason` are required; the
    resolution itself is queued, in the same local write, as a rooted RecoveryRecord). A
    request that cannot be carried out is refused `rejected` / `INVALID` and changes nothing.
    """

    action: str
    seq: int = 0
    resolution: str = ""
    reason: str = ""


@wire_type(505)
@dataclass(slots=True, frozen=True)
class OutboxReply:
    action: str
    detail: str  # what was done, one line ("" for list)
    body: dict[str, object]  # the outbox after the action (pending, blocked, current_state)
