"""Requests and replies of a store: KV operations and admin (DESIGN 5, 8). Tags 400-599.

Every refusal is a remote error of kind `rejected` whose reason is an `AdmissionReason` name
and whose `details["admission"]` is the full `Admission` record (leader hint, current epoch,
current descriptor). A write whose outcome is unknown (deadline passed after proposing) is a
remote error of kind `timeout` with reason `outcome_unknown`.

Multi-key transactions (`TxnRequest`) and range deletes (`DeleteRangeRequest`) stay inside
one region and apply as one raft entry each (`TxnCommand`, `DeleteRangeCommand`): compares
are evaluated against the state machine when the entry applies, never at admission
(docs/protocols.md, "Execution (stores)").
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
    """The region (and epoch) a KV request is for, the store it is sent to, how a read is served."""

    region_id: int
    epoch: RegionEpoch
    store_id: int
    read_mode: ReadMode = ReadMode.LINEARIZABLE
    max_stale_index: int = 0
    max_stale_ms: int = 0


@wire_type(401)
@dataclass(slots=True, frozen=True)
class GetRequest:
    """Read one key: clients send it to the store leading (or, by read mode, hosting) the region."""

    ctx: KvContext
    key: bytes


@wire_type(402)
@dataclass(slots=True, frozen=True)
class GetReply:
    """Answer to GetRequest: the value (None: the key is absent) and the index it was read at."""

    value: bytes | None
    read_index: int = 0
    stale_by_index: int = 0  # bounded-stale reads: how far behind commit the answer was
    stale_by_ms: int = 0


@wire_type(403)
@dataclass(slots=True, frozen=True)
class BatchGetRequest:
    """Read several keys of one region at one read point: clients send it to a store."""

    ctx: KvContext
    keys: list[bytes]


@wire_type(404)
@dataclass(slots=True, frozen=True)
class BatchGetReply:
    """Answer to BatchGetRequest: one value per key, in order (None: absent), and the read index."""

    values: list[bytes | None]
    read_index: int = 0


@wire_type(405)
@dataclass(slots=True, frozen=True)
class ScanRequest:
    """Read at most `limit` pairs of [start_key, end_key) in one region: clients, to a store."""

    ctx: KvContext
    start_key: bytes
    end_key: bytes = b""  # clipped to the region's end
    limit: int = 100


@wire_type(406)
@dataclass(slots=True, frozen=True)
class ScanReply:
    """Answer to ScanRequest: the pairs in key order, and where to go on when `more`."""

    pairs: list[tuple[bytes, bytes]]
    more: bool  # the region holds more keys in range past the limit
    read_index: int = 0
    next_key: bytes = b""  # with `more`: the first key in range not returned


@wire_type(407)
@dataclass(slots=True, frozen=True)
class PutRequest:
    """Write `key` = `value` in the region of `ctx`: clients send it to the region's leader.
    With `lease`, the key lives only while that lease does (nokvpy.protocol.leases)."""

    ctx: KvContext
    key: bytes
    value: bytes
    lease: int = 0


@wire_type(408)
@dataclass(slots=True, frozen=True)
class DeleteRequest:
    """Delete `key` in the region of `ctx`: clients send it to the region's leader, which
    answers with a WriteReply once the delete applied."""

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
    """Answer to a Put, Delete or Cas request: the index it applied at (Cas: whether it held)."""

    applied_index: int
    succeeded: bool = True  # CAS: whether the predicate held
    current: bytes | None = None  # CAS: the value seen when the predicate failed


# ---- transactions within one region, range deletes (411-429) ---------------------------

MAX_TXN_OPS = 128  # compares, and operations of each branch, per transaction
MAX_TXN_BYTES = 4 << 20  # keys and values of one transaction, all together
MAX_DELETE_RANGE_KEYS = 10_000  # keys one range-delete entry deletes at most


class CompareTarget(IntEnum):
    VALUE = 1  # the key's value (== / != `value`; a missing key has no value)
    EXISTS = 2  # EQ: the key exists; NE: it does not
    MOD = 3  # the key's modification index (0 for a missing key)


class CompareOp(IntEnum):
    EQ = 1
    NE = 2


class TxnOpKind(IntEnum):
    PUT = 1
    DELETE = 2
    GET = 3


@wire_type(411)
@dataclass(slots=True, frozen=True)
class TxnCompare:
    """One condition of a transaction, read from the state machine when the entry applies.

    VALUE: the key exists and its value is (EQ) / is not (NE) `value` (NE holds for a missing
    key). EXISTS: the key exists (EQ) / does not (NE). MOD: the key's modification index is
    (EQ) / is not (NE) `mod_index` (0: the key is missing); with `mod_region` (not 0) the
    region whose log wrote it must match too, which keeps the compare exact across splits and
    merges (a key moved to another region may be rewritten at an index it had before)."""

    key: bytes
    target: CompareTarget
    op: CompareOp = CompareOp.EQ
    value: bytes | None = None
    mod_index: int = 0
    mod_region: int = 0


@wire_type(412)
@dataclass(slots=True, frozen=True)
class TxnOp:
    """PUT `key` = `value`, DELETE `key`, or GET `key` (seeing the earlier operations of the
    same branch)."""

    kind: TxnOpKind
    key: bytes
    value: bytes | None = None


@wire_type(413)
@dataclass(slots=True, frozen=True)
class TxnRequest:
    """If every compare holds, run `success`, else `failure`: atomically, in one raft entry of
    the region holding every key."""

    ctx: KvContext
    compares: list[TxnCompare]
    success: list[TxnOp]
    failure: list[TxnOp]


@wire_type(414)
@dataclass(slots=True, frozen=True)
class TxnGetResult:
    """What a GET of a transaction read: the value (None: missing), and which entry last
    wrote it (the raft index and the region whose log it is in; 0 and 0 when missing)."""

    key: bytes
    value: bytes | None
    mod_index: int = 0
    mod_region: int = 0


@wire_type(415)
@dataclass(slots=True, frozen=True)
class TxnReply:
    """Answer to TxnRequest: the index it applied at, which branch ran, and what its GETs read."""

    applied_index: int
    succeeded: bool  # every compare held: the success branch ran (else the failure branch)
    gets: list[TxnGetResult]  # one per GET of the branch that ran, in order


@wire_type(416)
@dataclass(slots=True, frozen=True)
class DeleteRangeRequest:
    """Delete the keys of [start_key, end_key) that lie in the region (end b"": unbounded),
    at most `limit` of them (0: no limit but MAX_DELETE_RANGE_KEYS), in one raft entry."""

    ctx: KvContext
    start_key: bytes
    end_key: bytes = b""
    limit: int = 0


@wire_type(417)
@dataclass(slots=True, frozen=True)
class DeleteRangeReply:
    """Answer to DeleteRangeRequest: the index it applied at and how many keys it deleted."""

    applied_index: int
    deleted: int
    more: bool  # the limit cut the delete: keys remain in range in this region
    next_key: bytes = b""  # with `more`: the first key left


# raft entry payloads (raftstore.apply); not RPCs


@wire_type(420)
@dataclass(slots=True, frozen=True)
class TxnCommand:
    """The raft entry of a TxnRequest, proposed by the region's leader; compares run at apply."""

    region_id: int
    epoch: RegionEpoch
    compares: list[TxnCompare]
    success: list[TxnOp]
    failure: list[TxnOp]


@wire_type(421)
@dataclass(slots=True, frozen=True)
class DeleteRangeCommand:
    """The raft entry of a DeleteRangeRequest, proposed by the region's leader store."""

    region_id: int
    epoch: RegionEpoch
    start_key: bytes
    end_key: bytes
    limit: int


# ---- admin (500-599) -------------------------------------------------------------------


@wire_type(500)
@dataclass(slots=True, frozen=True)
class ExecutionStatusRequest:
    """Ask a store for its execution status, filtered by region and transition (0 / "": all)."""

    region_id: int = 0
    transition_id: str = ""


@wire_type(501)
@dataclass(slots=True, frozen=True)
class ExecutionStatusReply:
    """Answer to ExecutionStatusRequest: the store's status as plain nested data."""

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
    """Answer to AdminRequest: the transition id, its outcome and stage (names) on this store."""

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
    """Answer to OutboxRequest: what was done, and the outbox after it."""

    action: str
    detail: str  # what was done, one line ("" for list)
    body: dict[str, object]  # the outbox after the action (pending, blocked, current_state)


# ---- replica convergence (506-509) ----------------------------------------------------


@wire_type(506)
@dataclass(slots=True, frozen=True)
class RegionDigestRequest:
    """Ask a store for a digest of the applied KV state of each replica it hosts (of the
    regions in `region_ids`; empty: all). Read-only: it changes nothing on the store."""

    region_ids: tuple[int, ...] = ()


@wire_type(507)
@dataclass(slots=True, frozen=True)
class RegionDigest:
    """One replica's applied state: the replay pointer (applied index and term), the
    descriptor and the region's KV range, all read in one LMDB read transaction, so the
    digest is of the data at exactly `applied_index`.

    `digest`: blake2b (32 bytes) over (key length, key, value length, value) of every pair
    of [start_key, end_key) in key order, each length a u32 big-endian, values as the store
    holds them (with their modification-index header, which is replicated too); `key_count`
    and `byte_count` (keys + values) count the same pairs. `digest` is b"" when it was not
    computed, and `note` says why: "uninitialized" (no descriptor yet), "too_large: ..." (the
    range holds more than the store digests in one answer; `key_count` is then how many it
    read before stopping), "read_failed: ...". `voters` and `learners` are the store ids of
    the descriptor read with the data."""

    region_id: int
    peer_id: int
    applied_index: int
    applied_term: int
    epoch: RegionEpoch
    key_count: int
    digest: bytes
    note: str = ""
    byte_count: int = 0
    start_key: bytes = b""
    end_key: bytes = b""
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


@wire_type(508)
@dataclass(slots=True, frozen=True)
class RegionDigestReply:
    """Answer to RegionDigestRequest: one digest per hosted replica asked for, by region id
    (a region not hosted here is left out)."""

    store_id: int
    digests: tuple[RegionDigest, ...] = ()
