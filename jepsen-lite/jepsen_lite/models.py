"""Sequential specifications (models) of single-key objects for the linearizability checker.

This module owns the semantics of each operation: what state a key starts in, and what a
``read``/``write``/``cas``/``get``/``put``/``append`` does to it. It never searches for
linearizations and never reads history files.

A model compiles each :class:`~jepsen_lite.history.Operation` once into a *step function*
``state -> new_state``, returning :data:`ILLEGAL` when the operation's observed result is
impossible in ``state``. States are immutable and hashable (``None``, ``str``, ``tuple``), so
the checker can memoise ``(linearized set, state)``.

Indeterminate operations (``info`` or never completed) have no observed result. Their step
functions never return :data:`ILLEGAL`: an indeterminate ``cas`` whose expected value does
not match simply has no effect (equivalent to "it never happened"). Indeterminate reads
constrain nothing, so :meth:`Model.is_read` lets the checker drop them.

Models:

* ``register``: ``read`` (result: value, ``null`` = unset), ``write`` (value),
  ``cas`` (value ``[expected, new]``; ``ok`` = swapped; ``fail`` = not swapped).
* ``kv``: one string per key. ``get`` (result: value or ``null``), ``put`` (value),
  ``append`` (value: string appended; an unset key counts as ``""``).
* ``list-append``: one list per key. ``append`` (value: element), ``read`` (result: the
  whole list; ``null`` = empty).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .history import Operation

State = Any
StepFn = Callable[[State], State]


class _Illegal:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ILLEGAL"


ILLEGAL: Any = _Illegal()
"""Returned by a step function when the operation cannot happen in the given state."""

DATA_FUNCTIONS = frozenset({"read", "write", "cas", "get", "put", "append"})
"""Every ``f`` some model interprets; other ``f`` (txn, route, nemesis) are not checked."""


class ModelError(ValueError):
    """An operation does not fit the model (unknown ``f`` or malformed value)."""


def freeze(value: Any) -> Any:
    """A hashable copy of a JSON value (lists become tuples, dicts sorted item tuples)."""
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value


class Model:
    """Base class: a named sequential specification over hashable states."""

    name: str = ""
    functions: frozenset[str] = frozenset()
    read_functions: frozenset[str] = frozenset()

    def init(self) -> State:
        return None

    def is_read(self, op: Operation) -> bool:
        return op.f in self.read_functions

    def compile(self, op: Operation) -> StepFn:
        """The step function of ``op``; raises :class:`ModelError` if ``op`` does not fit."""
        raise NotImplementedError

    def relevant_indeterminate(self, ops: list[Operation]) -> list[Operation]:
        """``ops`` without indeterminate operations whose effect nothing could observe.

        Such an operation can always be left out ("it never happened") without changing
        the verdict, and leaving it out keeps it from multiplying the search. Models decide
        observability from the values other operations saw; the default keeps everything.
        """
        return list(ops)

    def observed(self, op: Operation) -> set:
        """Values ``op`` observed (a read's result, a cas's expected value)."""
        return set()

    def produced(self, op: Operation) -> set:
        """Values ``op`` may install or add (a write's value, an appended element)."""
        return set()

    def readers_of(self, ops: list[Operation]) -> dict[int, set[int]]:
        """For each op id, the ids of ops that observed something it produced.

        Used by shrinking so that a failing sub-history never loses the write a kept read
        saw (which would make the read "impossible" for a misleading reason).
        """
        writers: dict[Any, set[int]] = {}
        for op in ops:
            for value in self.produced(op):
                writers.setdefault(value, set()).add(op.id)
        readers: dict[int, set[int]] = {}
        for op in ops:
            for value in self.observed(op):
                for writer in writers.get(value, ()):
                    if writer != op.id:
                        readers.setdefault(writer, set()).add(op.id)
        return readers

    def describe(self, state: State) -> Any:
        """A JSON-friendly rendering of ``state`` for reports."""
        return list(state) if isinstance(state, tuple) else state

    def _unknown(self, op: Operation) -> ModelError:
        return ModelError(
            f"op {op.id}: model {self.name!r} has no function {op.f!r} "
            f"(expected one of {sorted(self.functions)})"
        )


def _keep(state: State) -> State:
    return state


def _read(expected: Any) -> StepFn:
    def step(state: State) -> State:
        return state if state == expected else ILLEGAL

    return step


def _write(value: Any) -> StepFn:
    def step(state: State) -> State:
        return value

    return step


class RegisterModel(Model):
    name = "register"
    functions = frozenset({"read", "write", "cas"})
    read_functions = frozenset({"read"})

    def compile(self, op: Operation) -> StepFn:
        if op.f == "read":
            return _keep if op.indeterminate else _read(freeze(op.output))
        if op.f == "write":
            return _write(freeze(op.input))
        if op.f == "cas":
            if not isinstance(op.input, list | tuple) or len(op.input) != 2:
                raise ModelError(f"op {op.id}: cas value must be [expected, new]")
            expected, new = freeze(op.input[0]), freeze(op.input[1])
            if op.indeterminate:

                def maybe_cas(state: State) -> State:
                    return new if state == expected else state

                return maybe_cas

            def cas(state: State) -> State:
                return new if state == expected else ILLEGAL

            return cas
        raise self._unknown(op)

    def observed(self, op: Operation) -> set:
        if op.f == "read" and not op.indeterminate:
            return {freeze(op.output)}
        if op.f == "cas" and isinstance(op.input, list | tuple) and len(op.input) == 2:
            return {freeze(op.input[0])}
        return set()

    def relevant_indeterminate(self, ops: list[Operation]) -> list[Operation]:
        # An indeterminate write/cas installing a value no read returned and no cas expected
        # must be overwritten before anyone looks, so dropping it changes nothing.
        seen: set = set()
        for op in ops:
            seen |= self.observed(op)
        return [
            op
            for op in ops
            if not op.indeterminate or not self.produced(op) or self.produced(op) & seen
        ]

    def produced(self, op: Operation) -> set:
        if op.f == "write":
            return {freeze(op.input)}
        if op.f == "cas" and isinstance(op.input, list | tuple) and len(op.input) == 2:
            return {freeze(op.input[1])}
        return set()


class KVModel(Model):
    name = "kv"
    functions = frozenset({"get", "put", "append"})
    read_functions = frozenset({"get"})

    def compile(self, op: Operation) -> StepFn:
        if op.f == "get":
            return _keep if op.indeterminate else _read(freeze(op.output))
        if op.f == "put":
            return _write(freeze(op.input))
        if op.f == "append":
            if not isinstance(op.input, str):
                raise ModelError(f"op {op.id}: kv append value must be a string")
            suffix = op.input

            def append(state: State) -> State:
                return suffix if state is None else state + suffix

            return append
        raise self._unknown(op)

    def relevant_indeterminate(self, ops: list[Operation]) -> list[Operation]:
        # Until the next put, every get after an indeterminate put of u starts with u, and
        # every get after an indeterminate append of x contains x.
        strings = [
            op.output
            for op in ops
            if op.f == "get" and not op.indeterminate and isinstance(op.output, str)
        ]

        def relevant(op: Operation) -> bool:
            if not op.indeterminate or op.f == "get":
                return True
            value = op.input
            if not isinstance(value, str) or not value:
                return True  # not worth reasoning about; keep
            if op.f == "put":
                return any(g.startswith(value) for g in strings)
            return any(value in g for g in strings)

        return [op for op in ops if relevant(op)]

    def readers_of(self, ops: list[Operation]) -> dict[int, set[int]]:
        # A get observes a concatenation, so match written pieces as substrings.
        writers = [(op.id, op.input) for op in ops if op.f in ("put", "append")]
        readers: dict[int, set[int]] = {}
        for op in ops:
            if op.f != "get" or op.indeterminate or not isinstance(op.output, str):
                continue
            for writer, piece in writers:
                if isinstance(piece, str) and piece in op.output:
                    readers.setdefault(writer, set()).add(op.id)
        return readers


class ListAppendModel(Model):
    name = "list-append"
    functions = frozenset({"append", "read"})
    read_functions = frozenset({"read"})

    def init(self) -> State:
        return ()

    def compile(self, op: Operation) -> StepFn:
        if op.f == "read":
            if op.indeterminate:
                return _keep
            if op.output is not None and not isinstance(op.output, list | tuple):
                raise ModelError(f"op {op.id}: list-append read result must be a list")
            return _read(freeze(op.output) if op.output is not None else ())
        if op.f == "append":
            element = freeze(op.input)

            def append(state: State) -> State:
                return state + (element,)

            return append
        raise self._unknown(op)

    def observed(self, op: Operation) -> set:
        if op.f == "read" and not op.indeterminate and isinstance(op.output, list | tuple):
            return {freeze(v) for v in op.output}
        return set()

    def produced(self, op: Operation) -> set:
        return {freeze(op.input)} if op.f == "append" else set()

    def relevant_indeterminate(self, ops: list[Operation]) -> list[Operation]:
        # Every read after an indeterminate append of e would contain e.
        seen: set = set()
        for op in ops:
            seen |= self.observed(op)
        return [op for op in ops if not op.indeterminate or freeze(op.input) in seen]


MODELS: dict[str, type[Model]] = {
    "register": RegisterModel,
    "kv": KVModel,
    "list-append": ListAppendModel,
}


def get_model(model: str | Model) -> Model:
    """A model instance by name (``register``, ``kv``, ``list-append``) or pass-through."""
    if isinstance(model, Model):
        return model
    try:
        return MODELS[model]()
    except KeyError:
        raise ModelError(f"unknown model {model!r}; choose from {sorted(MODELS)}") from None
