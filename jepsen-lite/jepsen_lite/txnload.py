"""The ``txn`` workload: a register made of several keys of one region, changed by transactions.

Owns: the key layout (``keys`` groups; group ``g`` is the three keys ``t/<g>/a``,
``t/<g>/b``, ``t/<g>/c``, ``<g>`` zero padded so the groups sort in order; the split keys
are the group starts ``t/<g>/`` only, so churn never puts a boundary inside a group and a
group always lies in one region) and how each register operation becomes one transaction
(``Client.txn``):

* ``read``: the three keys' values (``Op.get`` each). Equal values read as that integer
  (None when all three are missing); different ones as ``"torn:<a>,<b>,<c>"``, a value no
  write produced, so the linearizability checker flags the read.
* ``write``: put the same new unique integer to all three keys.
* ``cas``: compare all three keys ``==`` the expected value (``Compare.missing`` when it is
  None); success: put the new value to all three; failure: get the three (``fail`` with
  ``cas_mismatch`` and ``current``, the composite value read).

The history names each group's register ``t/<g>`` (model ``register``); errors map as in
:class:`~jepsen_lite.workloads.RegisterWorkload` (:func:`~jepsen_lite.workloads.classify_error`
through :func:`~jepsen_lite.workloads.perform`: outcome unknown is ``info``).
Never decides whether the history is right (the checkers).
"""

from __future__ import annotations

from typing import Any

from nokvpy.client import Compare
from nokvpy.client import Op as TxnOp

from .workloads import (
    WORKLOADS,
    Op,
    Outcome,
    RegisterWorkload,
    decode_int,
    encode_int,
)

SUFFIXES = (b"a", b"b", b"c")
TORN = "torn:"


def group_name(g: int) -> str:
    return f"t/{g:03d}"


def member_keys(name: str) -> list[bytes]:
    """The store keys of the composite register ``name``."""
    prefix = name.encode() + b"/"
    return [prefix + s for s in SUFFIXES]


def composite(values: list[Any]) -> Any:
    """The register value of a group's three decoded values: the value when they agree,
    else a torn marker no write produces."""
    if all(v == values[0] for v in values):
        return values[0]
    return TORN + ",".join("None" if v is None else str(v) for v in values)


class TxnWorkload(RegisterWorkload):
    """read / write / cas on composite registers of three keys, each one transaction."""

    name = "txn"
    model = "register"

    def keys(self) -> list[str]:
        return [group_name(g) for g in range(self.n_keys)]

    def split_keys(self) -> list[bytes]:
        return [name.encode() + b"/" for name in self.keys()]

    async def invoke(self, client: Any, op: Op, timeout: float) -> Outcome:
        self.touched.add(op.key)
        keys = member_keys(op.key)
        gets = [TxnOp.get(k) for k in keys]
        if op.f == "read":
            reply = await client.txn(success=gets, timeout=timeout)
            return Outcome("ok", _read(reply))
        if op.f == "write":
            value = encode_int(op.value)
            await client.txn(success=[TxnOp.put(k, value) for k in keys], timeout=timeout)
            return Outcome("ok", op.value)
        if op.f == "cas":
            expected, new = op.value
            if expected is None:
                compare = [Compare.missing(k) for k in keys]
            else:
                compare = [Compare.value(k, "==", encode_int(expected)) for k in keys]
            value = encode_int(new)
            reply = await client.txn(compare=compare,
                                     success=[TxnOp.put(k, value) for k in keys],
                                     failure=gets, timeout=timeout)
            if reply.succeeded:
                return Outcome("ok", op.value)
            current = _read(reply)
            extra: dict[str, Any] = {"error": "cas_mismatch", "current": current}
            if isinstance(current, str) and current.startswith(TORN):
                extra["torn"] = True
            return Outcome("fail", op.value, extra)
        raise ValueError(f"txn workload has no f {op.f!r}")


def _read(reply: Any) -> Any:
    values = [decode_int(g.value) for g in reply.gets]
    if len(values) != len(SUFFIXES):
        return f"{TORN}gets={len(values)}"
    return composite(values)


WORKLOADS["txn"] = TxnWorkload

__all__ = ["TxnWorkload", "composite", "group_name", "member_keys"]
