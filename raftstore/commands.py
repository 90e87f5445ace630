"""Raft entry payloads of a region: building and reading them, with a fast codec.

Owns: how a store turns client writes and admin commands into entry bytes and back. The
records themselves live in `nokvpy.protocol.raftstore_cmds` (tags 450-499); this module
installs hand-written encoders/decoders for the hot ones (`KvCommand`, `KvOp`) that produce
exactly the generic codec's wire shape (`[451, region_id, [51, version, conf_ver],
[[450, kind, key, value, expected(, lease)], ...]]`, the lease only when set), so any other reader decodes them unchanged.
Transactions and range deletes (`TxnCommand`, `DeleteRangeCommand`, records of
`nokvpy.protocol.store_rpc`) use the generic codec. Never interprets a command (that is
`raftstore.apply`).
"""

from __future__ import annotations

from typing import Any

from nokvpy.protocol import RegionEpoch
from nokvpy.protocol.raftstore_cmds import AdminCommand, KvCommand, KvOp, KvOpKind
from nokvpy.protocol.store_rpc import DeleteRangeCommand, TxnCommand, TxnCompare, TxnOp
from nokvpy.wire import DecodeError, decode, encode
from nokvpy.wire.codec import register_custom

_KV_TAG = KvCommand.__wire_tag__
_OP_TAG = KvOp.__wire_tag__
_EPOCH_TAG = RegionEpoch.__wire_tag__
_KINDS = {int(k): k for k in KvOpKind}


def _enc_op(op: KvOp) -> list:
    if op.lease:
        return [_OP_TAG, int(op.kind), op.key, op.value, op.expected, op.lease]
    return [_OP_TAG, int(op.kind), op.key, op.value, op.expected]


def _dec_op(v: list, budget: int) -> KvOp:
    n = len(v)
    if n < 3:
        raise DecodeError(f"KvOp: {n - 1} fields, at least 2 required")
    kind = _KINDS.get(v[1]) if type(v[1]) is int else None
    if kind is None:
        raise DecodeError(f"KvOp.kind: invalid value {v[1]!r}")
    key = v[2]
    value = v[3] if n > 3 else None
    expected = v[4] if n > 4 else None
    if type(key) is not bytes or (value is not None and type(value) is not bytes) or (
            expected is not None and type(expected) is not bytes):
        raise DecodeError("KvOp: key, value and expected must be bytes (or nil)")
    if n > 5:
        lease = v[5]
        if type(lease) is not int:  # its range is checked at apply
            raise DecodeError("KvOp.lease: expected an int")
        return KvOp(kind, key, value, expected, lease)
    return KvOp(kind, key, value, expected)


def _enc_cmd(cmd: KvCommand) -> list:
    e = cmd.epoch
    return [_KV_TAG, cmd.region_id, [_EPOCH_TAG, e.version, e.conf_ver],
            [_enc_op(op) for op in cmd.ops]]


def _dec_cmd(v: list, budget: int) -> KvCommand:
    if len(v) < 4:
        raise DecodeError(f"KvCommand: {len(v) - 1} fields, 3 required")
    rid, epoch, ops = v[1], v[2], v[3]
    if type(rid) is not int:
        raise DecodeError("KvCommand.region_id: expected an int")
    if (type(epoch) is not list or len(epoch) < 3 or epoch[0] != _EPOCH_TAG
            or type(epoch[1]) is not int or type(epoch[2]) is not int):
        raise DecodeError("KvCommand.epoch: expected a RegionEpoch record")
    if type(ops) is not list:
        raise DecodeError("KvCommand.ops: expected a list")
    out = []
    for op in ops:
        if type(op) is not list or not op or op[0] != _OP_TAG:
            raise DecodeError("KvCommand.ops: expected KvOp records")
        out.append(_dec_op(op, budget))
    return KvCommand(rid, RegionEpoch(epoch[1], epoch[2]), out)


register_custom(KvOp, _enc_op, _dec_op)
register_custom(KvCommand, _enc_cmd, _dec_cmd)


def kv_command(region_id: int, epoch: RegionEpoch, ops: list[KvOp]) -> bytes:
    """The entry payload of one client write."""
    return encode(KvCommand(region_id, epoch, ops))


def txn_command(region_id: int, epoch: RegionEpoch, compares: list[TxnCompare],
                success: list[TxnOp], failure: list[TxnOp]) -> bytes:
    """The entry payload of one transaction."""
    return encode(TxnCommand(region_id, epoch, list(compares), list(success), list(failure)))


def delete_range_command(region_id: int, epoch: RegionEpoch, start: bytes, end: bytes,
                         limit: int) -> bytes:
    """The entry payload of one range delete (the keys of [start, end) in the region)."""
    return encode(DeleteRangeCommand(region_id, epoch, start, end, limit))


def admin_command(op: str, region_id: int, epoch: RegionEpoch, transition_id: str = "",
                  payload: object = None) -> bytes:
    """The entry payload of a topology command (extension point for the topology issue)."""
    return encode(AdminCommand(op, region_id, epoch, transition_id, payload))


def decode_payload(data: bytes) -> Any:
    """The command an entry carries (a record), or raises DecodeError."""
    return decode(data)
