"""Codec contract: every registered record round-trips; anything malformed is a DecodeError."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_strategies import raw_value, record_strategy

from nokvpy.protocol import (
    EventKind,
    RegionDescriptor,
    RootEvent,
    RootToken,
    StoreMembership,
)
from nokvpy.protocol.base import TAGS, wire_type
from nokvpy.raft.types import (
    ConfState,
    Entry,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from nokvpy.wire import (
    DecodeError,
    DecodeLimits,
    EncodeError,
    ErrorReply,
    RaftBatch,
    RaftEnvelope,
    decode,
    decode_as,
    encode,
    registered_types,
)
from nokvpy.wire.codec import pack_raw, unpack_raw
from nokvpy.wire.schema import compile_record as _compile

ALL_TAGS = sorted(registered_types())


def test_every_registered_record_has_a_schema():
    for tag in ALL_TAGS:
        _compile(TAGS[tag])  # raises WireSchemaError for an unsupported annotation


def test_protocol_submodules_are_discovered():
    modules = {cls.__module__ for cls in registered_types().values()}
    assert "nokvpy.protocol.records" in modules
    assert "nokvpy.wire.raft_msgs" in modules and "nokvpy.wire.rpc_msgs" in modules
    assert {1, 6, 40, 41, 110} <= set(ALL_TAGS)


@pytest.mark.parametrize("tag", ALL_TAGS, ids=lambda t: f"{t}-{TAGS[t].__name__}")
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_round_trip(tag, data):
    obj = data.draw(record_strategy(TAGS[tag]))
    wire = encode(obj)
    back = decode(wire)
    assert type(back) is type(obj)
    assert back == obj
    assert encode(back) == wire  # stable: field-by-field identical, not just __eq__


def test_raft_message_fast_path_round_trip():
    m = Message(
        MessageType.APP, to=2, frm=1, term=5, log_term=4, index=10,
        entries=[Entry(5, 11, 0, b"a"), Entry(5, 12, 1, b"bb")], commit=10,
        snapshot=Snapshot(SnapshotMetadata(3, 2, ConfState((1, 2), (3,))), b"snap"),
    )
    batch = RaftBatch(1, 2, [RaftEnvelope(7, 1, 2, 3, 4, m)] * 3)
    assert decode(encode(batch)) == batch
    raw = unpack_raw(encode(m))
    assert raw[7] == [5, 11, 0, b"a", 5, 12, 1, b"bb"]  # entries travel flat


def test_raft_message_fast_path_matches_the_raft_types():
    from nokvpy.wire import raft_codec

    assert raft_codec.FAST_PATH_ACTIVE, "Message changed: update nokvpy/wire/raft_codec.py"


def test_trailing_defaulted_fields_may_be_omitted_and_extras_ignored():
    assert decode(pack_raw([TAGS_OF(RootToken)])) == RootToken(0, 0)
    assert decode(pack_raw([TAGS_OF(StoreMembership), 3])) == StoreMembership(3, "")
    assert decode(pack_raw([TAGS_OF(StoreMembership), 3, "a:1", "future", 9])) == StoreMembership(
        3, "a:1"
    )


def TAGS_OF(cls: type) -> int:
    return cls.__wire_tag__


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ([9999, 1], "unknown wire tag 9999"),
        ([TAGS_OF(StoreMembership)], "missing required field 'store_id'"),
        ([TAGS_OF(StoreMembership), "3"], "StoreMembership.store_id: expected int, got str"),
        ([TAGS_OF(StoreMembership), True], "expected int, got bool"),
        ([TAGS_OF(RootEvent), 999, None], "bad enum value 999"),
        ([TAGS_OF(RootEvent), "x", None], "RootEvent.kind"),
        ([TAGS_OF(RootEvent), 1, [9999]], "RootEvent.payload: unknown wire tag 9999"),
        ([TAGS_OF(RootEvent), 1, []], "empty array"),
        ([TAGS_OF(RegionDescriptor), 1, b"", b"", [50, 1, 1]], "expected RegionEpoch, got RootToken"),
        ([TAGS_OF(Message), 0, 1, 2, 3, 4, 5, [], 0, False, 0, None, b""], "not a wire raft message"),
        ([TAGS_OF(Message), 11, 1, 2, 3, 4, 5, [1, 2, 3], 0, False, 0, None, b""], "entries"),
        ([TAGS_OF(Message), 11, 1, 2, 3, 4, 5, [1, 2, 3, "x"], 0, False, 0, None, b""], "entries[0]"),
        (["x"], "tag must be an int"),
        ({"a": 1}, "expected a record array"),
        ([], "empty array"),
    ],
)
def test_malformed_records_are_decode_errors_with_reasons(raw, needle):
    with pytest.raises(DecodeError) as exc:
        decode(pack_raw(raw))
    assert needle in exc.value.reason


def test_bounds_are_enforced():
    small = DecodeLimits(max_bytes_len=4, max_str_len=4, max_list_len=4, max_map_len=2, max_depth=3)
    with pytest.raises(DecodeError):
        decode(encode(StoreMembership(1, "long address")), small)
    with pytest.raises(DecodeError):
        decode(encode(ErrorReply(1, "k", details={"a": 1, "b": 2, "c": 3})), small)
    nested = [0, [0, [0, [0, [0, 1]]]]]
    with pytest.raises(DecodeError, match="nesting too deep"):
        decode(pack_raw([TAGS_OF(RootEvent), 1, nested]), small)
    # 5000 nested [0, [0, ...]] arrays, built by hand (the packer refuses to nest that deep)
    head = pack_raw([TAGS_OF(RootEvent), 1, None])[:-1]
    with pytest.raises(DecodeError):
        decode(head + b"\x92\x00" * 5000 + b"\x01")


def test_decode_as_checks_the_type():
    assert decode_as(encode(RootToken(1, 2)), RootToken) == RootToken(1, 2)
    with pytest.raises(DecodeError, match="expected StoreMembership"):
        decode_as(encode(RootToken(1, 2)), StoreMembership)


def test_encode_errors():
    @dataclasses.dataclass
    class NotRegistered:
        x: int

    with pytest.raises(EncodeError, match="not a registered wire record"):
        encode(NotRegistered(1))
    with pytest.raises(EncodeError):
        encode(RootEvent(EventKind.STORE_JOINED, object()))
    with pytest.raises(EncodeError):
        encode(RootToken(1, 2**70))


@wire_type(65000)
@dataclasses.dataclass(slots=True, frozen=True)
class _LateRecord:  # registered after import: picked up without any codec change
    a: int
    b: tuple[str, ...] = ()
    c: frozenset[int] = frozenset()
    d: dict[int, bool] = dataclasses.field(default_factory=dict)
    e: tuple[int, str] | None = None
    f: int | str = 0


def test_records_registered_later_are_supported():
    r = _LateRecord(1, ("x",), frozenset({3, 1}), {1: True}, (2, "y"), "s")
    assert decode(encode(r)) == r
    assert decode(encode(_LateRecord(1, f=5))).f == 5


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(data):
    try:
        decode(data)
    except DecodeError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw_value())
def test_arbitrary_msgpack_values_raise_only_decode_error(value):
    try:
        decode(pack_raw(value))
    except DecodeError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_valid_records_raise_only_decode_error(data):
    tag = data.draw(st.sampled_from(ALL_TAGS))
    raw = unpack_raw(encode(data.draw(record_strategy(TAGS[tag]))))
    if len(raw) > 1:
        i = data.draw(st.integers(1, len(raw) - 1))
        raw[i] = data.draw(raw_value(2))
    else:
        raw.append(data.draw(raw_value(2)))
    try:
        decode(pack_raw(raw))
    except DecodeError:
        pass
