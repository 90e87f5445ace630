"""Hypothesis strategies derived from record type hints, so new records are covered as soon
as they are registered."""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from functools import cache

from hypothesis import strategies as st

from nokvpy.protocol.base import TAGS
from nokvpy.raft.types import LOCAL_MESSAGE_TYPES, Message, MessageType
from nokvpy.wire import registered_types

INT = st.integers(min_value=-(2**63), max_value=2**64 - 1)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INT,
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
)


def _is_record(tp: object) -> bool:
    return isinstance(tp, type) and TAGS.get(getattr(tp, "__wire_tag__", None)) is tp


def value_strategy(tp: object, depth: int) -> st.SearchStrategy:
    if tp is int:
        return INT
    if tp is bool:
        return st.booleans()
    if tp is float:
        return st.floats(allow_nan=False)
    if tp is str:
        return st.text(max_size=10)
    if tp is bytes:
        return st.binary(max_size=10)
    if tp is type(None) or tp is None:
        return st.none()
    if tp is object or tp is typing.Any:
        return any_value(depth)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return st.sampled_from(list(tp))
    if _is_record(tp):
        return record_strategy(tp, depth - 1)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is types.UnionType or origin is typing.Union:
        return st.one_of([value_strategy(a, depth) for a in args])
    size = 3 if depth > 0 else 0
    if origin is list:
        return st.lists(value_strategy(args[0], depth - 1), max_size=size)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(value_strategy(args[0], depth - 1), max_size=size).map(tuple)
        return st.tuples(*[value_strategy(a, depth - 1) for a in args])
    if origin is frozenset:
        return st.frozensets(value_strategy(args[0], depth - 1), max_size=size)
    if origin is dict:
        return st.dictionaries(
            value_strategy(args[0], depth - 1), value_strategy(args[1], depth - 1), max_size=size
        )
    raise TypeError(f"no strategy for {tp!r}")


def any_value(depth: int) -> st.SearchStrategy:
    """Values for `object` fields: scalars, lists, str-keyed dicts, registered records."""
    if depth <= 0:
        return SCALARS
    records = st.sampled_from(sorted(registered_types())).flatmap(
        lambda tag: record_strategy(TAGS[tag], depth - 1)
    )
    return st.one_of(
        SCALARS,
        st.lists(SCALARS, max_size=3),
        st.dictionaries(st.text(max_size=5), SCALARS, max_size=3),
        records,
    )


@cache
def record_strategy(cls: type, depth: int = 3) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    parts = []
    for f in fields:
        if cls is Message and f.name == "type":
            parts.append(st.sampled_from([t for t in MessageType if t not in LOCAL_MESSAGE_TYPES]))
        else:
            parts.append(value_strategy(hints[f.name], depth))
    return st.builds(cls, *parts)


@cache
def raw_value(depth: int = 3) -> st.SearchStrategy:
    """Arbitrary msgpack-representable values, biased towards known record tags."""
    tags = st.sampled_from(sorted(registered_types()))
    return st.recursive(
        SCALARS | tags,
        lambda inner: st.lists(inner, max_size=6)
        | st.dictionaries(st.one_of(st.text(max_size=4), INT), inner, max_size=4)
        | st.builds(lambda t, rest: [t, *rest], tags, st.lists(inner, max_size=14)),
        max_leaves=30,
    )
