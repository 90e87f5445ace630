"""Record schemas: registered dataclasses <-> plain wire values (lists, dicts, scalars).

Owns: the wire shape of every record registered with `nokvpy.protocol.base.wire_type`: the
per-class encoder/decoder pair derived from its type hints (compiled once, cached), the
field-type codecs (scalars, enums, nested records, unions, sequences, sets, dicts, `object`
positions) and decode-time validation of types, required fields, enum values and nesting
depth. Never touches bytes: packing the values into msgpack, and the size bounds of a
message, are `nokvpy.wire.codec`'s. Never does I/O.

Shape: a record is the array `[tag, field1, field2, ...]` in dataclass field order.
Trailing fields that have defaults may be omitted (records grow by appending defaulted
fields); extra trailing fields sent by a newer peer are ignored. A field annotated `object`
(or `Any`) holds a registered record (encoded with its own tag), a scalar, a dict, or a plain
list, which is encoded as `[0, item, ...]` (tag 0 is never a record tag) so it cannot be
mistaken for a record; tuples in `object` positions come back as lists and enums as their
plain value.

Classes may install a hand-written encoder/decoder pair (`register_custom`) for hot paths
(raft `Message`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from enum import Enum, IntEnum, StrEnum
from operator import attrgetter
from typing import Any

from nokvpy.protocol.base import TAGS
from nokvpy.wire.errors import DecodeError, EncodeError, WireSchemaError

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any, int], Any]  # (wire value, remaining nesting budget) -> value

_RECORD_ENC: dict[type, Encoder] = {}
_RECORD_DEC: dict[type, Decoder] = {}
_SCALARS = (int, bool, float, str, bytes, type(None))


# ---- registry ---------------------------------------------------------------------------


def register_custom(cls: type, encoder: Encoder, decoder: Decoder) -> None:
    """Install a hand-written codec for a registered record.

    `encoder(obj)` returns the full wire array including the tag; `decoder(array, budget)`
    receives the array (tag included, already matched to `cls`) and must raise DecodeError
    for anything malformed.
    """
    if TAGS.get(getattr(cls, "__wire_tag__", None)) is not cls:
        raise WireSchemaError(f"{cls.__qualname__} is not a registered wire record")
    _RECORD_ENC[cls] = encoder
    _RECORD_DEC[cls] = decoder


def is_record(tp: object) -> bool:
    """Whether `tp` is a class registered with `@wire_type` (under its own tag)."""
    return isinstance(tp, type) and TAGS.get(getattr(tp, "__wire_tag__", None)) is tp


# ---- records ----------------------------------------------------------------------------


def encode_record(obj: object) -> list:
    """The wire array of a registered record (before msgpack packing)."""
    enc = _RECORD_ENC.get(type(obj))
    if enc is None:
        enc = compile_record(type(obj))[0]
    return enc(obj)


def decode_record(v: object, budget: int) -> object:
    """Decode one wire array (already msgpack-unpacked) into its record."""
    if type(v) is not list:
        raise DecodeError(f"expected a record array, got {_kind(v)}")
    if not v:
        raise DecodeError("empty array where a record was expected")
    tag = v[0]
    if type(tag) is not int:
        raise DecodeError(f"record tag must be an int, got {_kind(tag)}")
    cls = TAGS.get(tag)
    if cls is None:
        raise DecodeError(f"unknown wire tag {tag}")
    if budget <= 0:
        raise DecodeError("nesting too deep")
    dec = _RECORD_DEC.get(cls)
    if dec is None:
        dec = _compile_or_decode_error(cls)
    return dec(v, budget - 1)


def _compile_or_decode_error(cls: type) -> Decoder:
    try:
        return compile_record(cls)[1]
    except WireSchemaError as e:
        raise DecodeError(f"record {cls.__qualname__} has no usable schema: {e}") from None


def compile_record(cls: type) -> tuple[Encoder, Decoder]:
    """The (encoder, decoder) of a registered record class, derived from its type hints on
    first use and cached (a `register_custom` pair wins). Raises WireSchemaError for a field
    annotation the codec cannot carry."""
    if not is_record(cls):
        raise EncodeError(
            f"{cls.__qualname__} is not a registered wire record (missing @wire_type?)"
        )
    if not dataclasses.is_dataclass(cls):
        raise WireSchemaError(f"{cls.__qualname__} is registered but is not a dataclass")
    try:
        hints = typing.get_type_hints(cls)
    except Exception as e:
        raise WireSchemaError(f"{cls.__qualname__}: cannot resolve type hints: {e}") from e
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    codecs = [_type_codec(hints[n], f"{cls.__qualname__}.{n}") for n in names]
    required = sum(
        1
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    # Invariant: required fields precede defaulted ones (dataclasses enforce it).
    enc = _record_encoder(cls.__wire_tag__, names, [c[0] for c in codecs])
    dec = _record_decoder(cls, names, [c[1] for c in codecs], required)
    _RECORD_ENC.setdefault(cls, enc)
    _RECORD_DEC.setdefault(cls, dec)
    return _RECORD_ENC[cls], _RECORD_DEC[cls]


def _record_encoder(tag: int, names: list[str], encs: list[Encoder | None]) -> Encoder:
    conv = [(i + 1, e) for i, e in enumerate(encs) if e is not None]
    if not names:
        return lambda obj: [tag]
    if len(names) == 1:
        name = names[0]
        e0 = encs[0]
        if e0 is None:
            return lambda obj: [tag, getattr(obj, name)]
        return lambda obj: [tag, e0(getattr(obj, name))]
    get = attrgetter(*names)

    def enc(obj: object) -> list:
        out = [tag, *get(obj)]
        for i, e in conv:
            out[i] = e(out[i])
        return out

    return enc


def _record_decoder(cls: type, names: list[str], decs: list[Decoder], required: int) -> Decoder:
    n_fields = len(names)
    cname = cls.__qualname__
    indexed = list(enumerate(decs))

    def dec(v: list, budget: int) -> object:
        n = len(v) - 1
        if n < required:
            raise DecodeError(
                f"{cname}: missing required field {names[n]!r} ({n} of {n_fields} fields sent)"
            )
        args = v[1 : n_fields + 1]
        i = 0
        try:
            for i, d in indexed[: len(args)]:
                args[i] = d(args[i], budget)
        except DecodeError as e:
            raise DecodeError(f"{cname}.{names[i]}: {e.reason}") from None
        try:
            return cls(*args)
        except DecodeError:
            raise
        except Exception as e:
            raise DecodeError(f"{cname}: rejected by constructor: {e}") from None

    return dec


# ---- field types ------------------------------------------------------------------------


def _kind(v: object) -> str:
    return type(v).__name__


def _dec_int(v: object, budget: int) -> int:
    if type(v) is not int:
        raise DecodeError(f"expected int, got {_kind(v)}")
    return v  # type: ignore[return-value]


def _dec_bool(v: object, budget: int) -> bool:
    if type(v) is not bool:
        raise DecodeError(f"expected bool, got {_kind(v)}")
    return v  # type: ignore[return-value]


def _dec_float(v: object, budget: int) -> float:
    t = type(v)
    if t is float:
        return v  # type: ignore[return-value]
    if t is int:
        return float(v)  # type: ignore[arg-type]
    raise DecodeError(f"expected float, got {_kind(v)}")


def _dec_str(v: object, budget: int) -> str:
    if type(v) is not str:
        raise DecodeError(f"expected str, got {_kind(v)}")
    return v  # type: ignore[return-value]


def _dec_bytes(v: object, budget: int) -> bytes:
    if type(v) is not bytes:
        raise DecodeError(f"expected bytes, got {_kind(v)}")
    return v  # type: ignore[return-value]


def _dec_none(v: object, budget: int) -> None:
    if v is not None:
        raise DecodeError(f"expected nil, got {_kind(v)}")


_PRIMITIVE_DECODERS: dict[object, Decoder] = {
    int: _dec_int,
    bool: _dec_bool,
    float: _dec_float,
    str: _dec_str,
    bytes: _dec_bytes,
    type(None): _dec_none,
    None: _dec_none,
}


def encode_any(v: object) -> object:
    """Encode a value in an `object` position (see the module docstring)."""
    t = type(v)
    if t in _SCALARS:
        return v
    enc = _RECORD_ENC.get(t)
    if enc is not None:
        return enc(v)
    if t is list or t is tuple:
        return [0, *map(encode_any, v)]  # type: ignore[call-overload]
    if t is dict:
        out = {}
        for k, x in v.items():  # type: ignore[attr-defined]
            if type(k) not in _SCALARS and not isinstance(k, (int, str)):
                raise EncodeError(f"dict key {k!r} in an object position must be a scalar")
            out[k] = encode_any(x)
        return out
    if isinstance(v, Enum) and isinstance(v, (int, str)):
        return v.value
    if t is frozenset or t is set:
        return [0, *map(encode_any, _sorted_if_possible(v))]  # type: ignore[arg-type]
    if is_record(t):
        return compile_record(t)[0](v)
    raise EncodeError(f"cannot encode a {t.__qualname__} in an object position")


def decode_any(v: object, budget: int) -> object:
    """Decode a value in an `object` position."""
    t = type(v)
    if t is list:
        if not v:
            raise DecodeError("empty array in an object position")
        head = v[0]  # type: ignore[index]
        if head == 0 and type(head) is int:
            if budget <= 0:
                raise DecodeError("nesting too deep")
            return [decode_any(x, budget - 1) for x in v[1:]]  # type: ignore[index]
        return decode_record(v, budget)
    if t is dict:
        if budget <= 0:
            raise DecodeError("nesting too deep")
        return {k: decode_any(x, budget - 1) for k, x in v.items()}  # type: ignore[attr-defined]
    if t in _SCALARS:
        return v
    raise DecodeError(f"unsupported value {_kind(v)} in an object position")


def _sorted_if_possible(v: Any) -> list:
    try:
        return sorted(v)
    except TypeError:
        return list(v)


def _type_codec(tp: Any, where: str) -> tuple[Encoder | None, Decoder]:
    """(encoder or None for identity, decoder) for one annotation."""
    if tp in _PRIMITIVE_DECODERS:
        return None, _PRIMITIVE_DECODERS[tp]
    if tp is object or tp is Any:
        return encode_any, decode_any
    if isinstance(tp, type) and issubclass(tp, Enum):
        return None, _enum_decoder(tp, where)
    if is_record(tp):
        return _nested_record_codec(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is types.UnionType or origin is typing.Union:
        return _union_codec(args, where)
    if origin is list:
        return _seq_codec(args[0], list, where)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _seq_codec(args[0], tuple, where)
        if args == ((),):
            args = ()
        return _fixed_tuple_codec(args, where)
    if origin is frozenset or origin is set:
        return _set_codec(args[0], origin, where)
    if origin is dict:
        return _dict_codec(args[0], args[1], where)
    raise WireSchemaError(f"{where}: unsupported field annotation {tp!r}")


def _enum_decoder(tp: type[Enum], where: str) -> Decoder:
    if issubclass(tp, IntEnum):
        base: type = int
    elif issubclass(tp, StrEnum):
        base = str
    else:
        raise WireSchemaError(f"{where}: only IntEnum and StrEnum are supported, not {tp!r}")
    members = {m.value: m for m in tp}
    name = tp.__name__

    def dec(v: object, budget: int) -> Enum:
        if type(v) is not base:
            raise DecodeError(f"expected {name} ({base.__name__}), got {_kind(v)}")
        m = members.get(v)
        if m is None:
            raise DecodeError(f"bad enum value {v!r} for {name}")
        return m

    return dec


def _nested_record_codec(tp: type) -> tuple[Encoder, Decoder]:
    def dec(v: object, budget: int) -> object:
        obj = decode_record(v, budget)
        if not isinstance(obj, tp):
            raise DecodeError(f"expected {tp.__name__}, got {type(obj).__name__}")
        return obj

    return encode_record, dec


def _union_codec(args: tuple, where: str) -> tuple[Encoder | None, Decoder]:
    others = [a for a in args if a is not type(None)]
    nullable = len(others) < len(args)
    if len(others) == 1:
        enc, inner = _type_codec(others[0], where)
        if not nullable:
            return enc, inner
        if enc is None:
            enc_opt = None
        else:

            def enc_opt(v: object, _e: Encoder = enc) -> object:
                return None if v is None else _e(v)

        def dec_opt(v: object, budget: int) -> object:
            return None if v is None else inner(v, budget)

        return enc_opt, dec_opt
    # General union: records carry their tag; scalars are told apart by msgpack type.
    alts = [(a, *_type_codec(a, where)) for a in others]
    for a, _, _ in alts:
        if not (a in _PRIMITIVE_DECODERS or is_record(a)):
            raise WireSchemaError(
                f"{where}: unions may only mix scalars and records (got {a!r}); use object"
            )

    def enc_union(v: object) -> object:
        return v if type(v) in _SCALARS else encode_record(v)

    def dec_union(v: object, budget: int) -> object:
        if v is None and nullable:
            return None
        if type(v) is list:
            obj = decode_record(v, budget)
            if any(isinstance(obj, a) for a, _, _ in alts if isinstance(a, type)):
                return obj
            raise DecodeError(f"record {type(obj).__name__} not allowed here")
        for _, _, d in alts:
            try:
                return d(v, budget)
            except DecodeError:
                continue
        raise DecodeError(f"value of type {_kind(v)} matches no alternative of the union")

    return enc_union, dec_union


def _seq_codec(item: Any, container: type, where: str) -> tuple[Encoder | None, Decoder]:
    enc, d = _type_codec(item, where)
    if enc is None:
        seq_enc = None
    else:

        def seq_enc(v: Any) -> list:
            return [enc(x) for x in v]

    if d is _dec_int:

        def seq_dec(v: object, budget: int) -> object:
            if type(v) is not list:
                raise DecodeError(f"expected array, got {_kind(v)}")
            for x in v:  # type: ignore[attr-defined]
                if type(x) is not int:
                    raise DecodeError(f"expected array of int, found {_kind(x)}")
            return v if container is list else tuple(v)  # type: ignore[arg-type]

        return seq_enc, seq_dec

    def seq_dec(v: object, budget: int) -> object:  # type: ignore[no-redef]
        if type(v) is not list:
            raise DecodeError(f"expected array, got {_kind(v)}")
        if budget <= 0:
            raise DecodeError("nesting too deep")
        b = budget - 1
        out: list = []
        append = out.append
        try:
            for x in v:  # type: ignore[attr-defined]
                append(d(x, b))
        except DecodeError as e:
            raise DecodeError(f"[{len(out)}]: {e.reason}") from None
        return out if container is list else tuple(out)

    return seq_enc, seq_dec


def _fixed_tuple_codec(items: tuple, where: str) -> tuple[Encoder, Decoder]:
    codecs = [_type_codec(a, where) for a in items]
    n = len(codecs)

    def enc(v: Any) -> list:
        if len(v) != n:
            raise EncodeError(f"{where}: expected a {n}-tuple, got {len(v)} items")
        return [x if e is None else e(x) for (e, _), x in zip(codecs, v, strict=True)]

    def dec(v: object, budget: int) -> tuple:
        if type(v) is not list or len(v) != n:  # type: ignore[arg-type]
            raise DecodeError(f"expected an array of {n} items, got {_kind(v)}")
        if budget <= 0:
            raise DecodeError("nesting too deep")
        return tuple(d(x, budget - 1) for (_, d), x in zip(codecs, v, strict=True))  # type: ignore[call-overload]

    return enc, dec


def _set_codec(item: Any, origin: type, where: str) -> tuple[Encoder, Decoder]:
    enc, d = _type_codec(item, where)

    def set_enc(v: Any) -> list:
        items = _sorted_if_possible(v)
        return items if enc is None else [enc(x) for x in items]

    def set_dec(v: object, budget: int) -> object:
        if type(v) is not list:
            raise DecodeError(f"expected array, got {_kind(v)}")
        if budget <= 0:
            raise DecodeError("nesting too deep")
        try:
            return origin(d(x, budget - 1) for x in v)  # type: ignore[attr-defined]
        except TypeError:
            raise DecodeError("set element is not hashable") from None

    return set_enc, set_dec


def _dict_codec(k: Any, val: Any, where: str) -> tuple[Encoder | None, Decoder]:
    kenc, kdec = _type_codec(k, where)
    venc, vdec = _type_codec(val, where)
    if kenc is not None and kenc is not encode_any:
        raise WireSchemaError(f"{where}: dict keys must be scalars or enums, not {k!r}")
    if venc is None and kenc is None:
        enc = None
    else:

        def enc(v: Any) -> dict:
            return {
                (kk if kenc is None else kenc(kk)): (vv if venc is None else venc(vv))
                for kk, vv in v.items()
            }

    def dec(v: object, budget: int) -> dict:
        if type(v) is not dict:
            raise DecodeError(f"expected map, got {_kind(v)}")
        if budget <= 0:
            raise DecodeError("nesting too deep")
        b = budget - 1
        out = {}
        for kk, vv in v.items():  # type: ignore[attr-defined]
            try:
                out[kdec(kk, b)] = vdec(vv, b)
            except DecodeError as e:
                raise DecodeError(f"[{kk!r}]: {e.reason}") from None
            except TypeError:
                raise DecodeError("map key is not hashable") from None
        return out

    return enc, dec
