"""The fast entry codec produces exactly the generic wire shape and rejects malformed input."""

from __future__ import annotations

import msgpack
import pytest

from nokvpy.protocol import RegionEpoch
from nokvpy.protocol.raftstore_cmds import AdminCommand, KvCommand, KvOp, KvOpKind
from nokvpy.wire import DecodeError, decode, encode
from raftstore.commands import admin_command, decode_payload, kv_command


def test_kv_command_wire_shape_and_roundtrip():
    ops = [KvOp(KvOpKind.PUT, b"a", b"1"), KvOp(KvOpKind.DELETE, b"b"),
           KvOp(KvOpKind.CAS, b"c", None, b"x")]
    data = kv_command(7, RegionEpoch(2, 3), ops)
    assert msgpack.unpackb(data) == [451, 7, [51, 2, 3], [[450, 1, b"a", b"1", None],
                                                         [450, 2, b"b", None, None],
                                                         [450, 3, b"c", None, b"x"]]]
    cmd = decode_payload(data)
    assert cmd == KvCommand(7, RegionEpoch(2, 3), ops)
    assert isinstance(cmd.ops[0].kind, KvOpKind)
    # the generic shape with omitted trailing defaults decodes too
    short = msgpack.packb([451, 7, [51, 2, 3], [[450, 2, b"b"]]], use_bin_type=True)
    assert decode(short) == KvCommand(7, RegionEpoch(2, 3), [KvOp(KvOpKind.DELETE, b"b")])


@pytest.mark.parametrize("bad", [
    [451, 7, [51, 2, 3]],
    [451, "7", [51, 2, 3], []],
    [451, 7, [52, 2, 3], []],
    [451, 7, [51, 2, 3], [[450, 9, b"a"]]],
    [451, 7, [51, 2, 3], [[450, 1, "a"]]],
    [451, 7, [51, 2, 3], [[450, 1, b"a", 5]]],
    [451, 7, [51, 2, 3], [[451]]],
    [451, 7, [51, 2, 3], "ops"],
])
def test_malformed_commands_raise_decode_error(bad):
    with pytest.raises(DecodeError):
        decode(msgpack.packb(bad, use_bin_type=True))


def test_admin_command_roundtrip():
    data = admin_command("split", 3, RegionEpoch(1, 1), "split:3:6b", {"key": b"k"})
    assert decode(data) == AdminCommand("split", 3, RegionEpoch(1, 1), "split:3:6b",
                                        {"key": b"k"})
    assert isinstance(encode(AdminCommand("x", 1, RegionEpoch())), bytes)
