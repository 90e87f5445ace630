"""jepsen-lite workloads: what the clients do, how each outcome is recorded, final reads.

Owns: the operation mix of each workload (``register``, ``append``, ``routes``; ``watch`` is
:mod:`.watchload`, which adds itself to :data:`WORKLOADS`: import the registry from there to
have every workload), encoding of
values in the store, the mapping of client errors to ``ok`` / ``fail`` / ``info``
(:func:`classify_error`), the client worker loop (one outstanding operation per process, a
fresh process id after every ``info``, a read after a failed write, pacing to ``--rate``), and
the final reads after the faults healed.

Never starts processes or injects faults (``control`` and ``nemesis``), never decides whether
the history is correct (the checkers). A client is anything with the async methods of
``nokvpy.client.Client`` that a workload uses (``get``, ``put``, ``compare_and_swap``,
``route``), so the workloads can be tested against an in-memory fake.

Error mapping (DESIGN section 8, docs/jepsen-history.md):

| client error | read | write / cas / append |
| --- | --- | --- |
| ``RejectedError``, ``UnavailableError``, ``InvalidRequestError``, ``RouteRejectedError`` | fail | fail (nothing written) |
| ``DeadlineExceededError`` | fail | info |
| ``OutcomeUnknownError``, any other error, the harness's own timeout | fail | info |
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from nokvpy.client.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    OutcomeUnknownError,
    RejectedError,
    RouteRejectedError,
    UnavailableError,
)

FAIL_ERRORS = (RejectedError, UnavailableError, InvalidRequestError, RouteRejectedError)


def classify_error(exc: BaseException, write: bool) -> tuple[str, str]:
    """``(completion type, error label)`` for an operation that raised ``exc``."""
    label = f"{type(exc).__name__}"
    reason = getattr(exc, "reason", None)
    if reason and reason != "error":
        label += f":{reason}"
    if isinstance(exc, FAIL_ERRORS):
        return "fail", label
    if not write:
        return "fail", label
    if isinstance(exc, (OutcomeUnknownError, DeadlineExceededError)):
        return "info", label
    return "info", label


@dataclass
class Outcome:
    """What one operation ended with: ``type`` ok/fail/info, the completion ``value``, and
    extra fields for the completion event (``error``, ``current``, ...)."""

    type: str
    value: Any = None
    extra: dict = field(default_factory=dict)


@dataclass
class Op:
    f: str
    key: str | None
    value: Any
    write: bool


class Workload:
    """Base class. ``model`` is the linearizability model of the history (``None``: no
    linearizability check, e.g. ``routes``)."""

    name = "?"
    model: str | None = None
    read_f = "read"

    def __init__(self, *, keys: int = 5, seed: int = 0):
        self.n_keys = keys
        self.seed = seed
        self._values = itertools.count(1)
        self.touched: set[str] = set()

    def next_value(self) -> int:
        return next(self._values)

    def keys(self) -> list[str]:
        return [f"k{i}" for i in range(self.n_keys)]

    def split_keys(self) -> list[bytes]:
        """Keys where topology churn may split (and ``:leader`` lookups)."""
        return [k.encode() for k in self.keys()]

    def final_keys(self) -> list[str]:
        """Keys to read at the end (every key that any operation touched)."""
        return sorted(self.touched)

    def next_op(self, rng: random.Random, state: dict) -> Op:
        raise NotImplementedError

    async def invoke(self, client: Any, op: Op, timeout: float) -> Outcome:
        raise NotImplementedError

    async def final_read(self, client: Any, key: str, timeout: float) -> Outcome:
        return await self.invoke(client, Op(self.read_f, key, None, False), timeout)

    def probe_write(self, key: str) -> Op | None:
        """A write of ``key`` with a fresh unique value, for the nemesis's own writes (the
        lease nemesis writes through a new leader); None when the workload has none."""
        return None

    @classmethod
    def store_args(cls, options: dict) -> list[str]:
        """Extra command-line arguments for every store the run creates."""
        return []

    def session(self, new_client: Callable[[int], Any], recorder: Any, run_dir: Any,
                log: Callable[[str], None], op_timeout: float = 2.0) -> Any:
        """Tasks that run beside the clients for the whole run (``async with``, opened before
        the clients start; ``await finish()`` after the heal, before the final reads)."""
        return NoSession()

    @staticmethod
    def run_checks(history: Any, run_dir: Any) -> dict[str, dict]:
        """The workload's own checks of a run directory (``checks[name]``)."""
        return {}


class NoSession:
    async def __aenter__(self) -> NoSession:
        return self

    async def __aexit__(self, *exc: Any) -> bool:
        return False

    async def finish(self) -> None:
        return None


class RecordingSession:
    """What a workload's session with an events file has in common (watch, kvlease): the
    JSON-lines file it records to (`_write`), the clients it made (`_client`, all closed at
    the end), and one nursery for its tasks, opened by `_open` and cancelled by `_close`."""

    def __init__(self, new_client: Callable[[int], Any], path: Any):
        self.new_client = new_client
        self.path = path
        self.clients: list[Any] = []
        self._file: Any = None
        self._cm: Any = None
        self._nursery: trio.Nursery | None = None

    def _write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
            self._file.flush()

    def _client(self, index: int) -> Any:
        client = self.new_client(index)
        self.clients.append(client)
        return client

    async def _open(self, config: dict) -> trio.Nursery:
        """Open the events file (its first record: `config`) and the nursery."""
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in _close
        self._write(config)
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()
        return self._nursery

    async def _close(self) -> None:
        """Cancel the nursery's tasks, then close every client and the file."""
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        try:
            await self._cm.__aexit__(None, None, None)
        finally:
            with trio.CancelScope(shield=True):
                for client in self.clients:
                    try:
                        await client.aclose()
                    except Exception:  # noqa: BLE001, S110 - closing: nothing to do about it
                        pass
            if self._file is not None:
                self._file.close()
                self._file = None


# -- register ------------------------------------------------------------------------------


def decode_int(raw: bytes | None) -> Any:
    if raw is None:
        return None
    text = raw.decode("utf-8", "backslashreplace")
    return int(text) if text.isdigit() else text


def encode_int(value: Any) -> bytes | None:
    return None if value is None else str(value).encode()


class RegisterWorkload(Workload):
    """read / write / cas on a few keys; write values are unique integers.

    The cas ``expected`` value is the last value this worker saw on the key (read or
    written), so a good share of them succeed."""

    name = "register"
    model = "register"
    mix = (("read", 0.5), ("write", 0.3), ("cas", 0.2))

    def next_op(self, rng: random.Random, state: dict) -> Op:
        key = rng.choice(self.keys())
        f = "read" if state.get("after_failed_write") else _weighted(rng, self.mix)
        seen = state.setdefault("seen", {})
        if f == "read":
            return Op("read", key, None, False)
        if f == "write":
            return Op("write", key, self.next_value(), True)
        return Op("cas", key, [seen.get(key), self.next_value()], True)

    async def invoke(self, client: Any, op: Op, timeout: float) -> Outcome:
        self.touched.add(op.key)
        kb = op.key.encode()
        if op.f == "read":
            return Outcome("ok", decode_int(await client.get(kb, timeout=timeout)))
        if op.f == "write":
            await client.put(kb, encode_int(op.value), timeout=timeout)
            return Outcome("ok", op.value)
        if op.f == "cas":
            expected, new = op.value
            ok, current = await client.compare_and_swap(
                kb, encode_int(expected), encode_int(new), timeout=timeout
            )
            if ok:
                return Outcome("ok", op.value)
            return Outcome("fail", op.value, {"error": "cas_mismatch", "current": decode_int(current)})
        raise ValueError(f"register workload has no f {op.f!r}")

    def final_keys(self) -> list[str]:
        return sorted(set(self.keys()) | self.touched)

    def probe_write(self, key: str) -> Op | None:
        return Op("write", key, self.next_value(), True)

    @staticmethod
    def observe(state: dict, op: Op, outcome: Outcome) -> None:
        seen = state.setdefault("seen", {})
        if outcome.type == "ok":
            if op.f == "read":
                seen[op.key] = outcome.value
            elif op.f == "write":
                seen[op.key] = op.value
            elif op.f == "cas":
                seen[op.key] = op.value[1]
        elif op.f == "cas" and "current" in outcome.extra:
            seen[op.key] = outcome.extra["current"]


# -- list append ---------------------------------------------------------------------------


def decode_list(raw: bytes | None) -> list:
    if raw is None:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, list):
        return [f"<not a list: {raw[:60]!r}>"]
    return value


def encode_list(values: list) -> bytes:
    return json.dumps(values, separators=(",", ":")).encode()


class AppendWorkload(Workload):
    """List append: the list is stored as a JSON array in the key's value; ``append`` is a
    read-modify-CAS loop, ``read`` returns the whole list (model ``list-append``).

    A key takes at most ``max_appends`` appends, then a new key replaces it (keeps every
    key's history small for the checker, and the values short)."""

    name = "append"
    model = "list-append"
    mix = (("read", 0.4), ("append", 0.6))

    def __init__(self, *, keys: int = 5, seed: int = 0, max_appends: int = 64, attempts: int = 8):
        super().__init__(keys=keys, seed=seed)
        self.max_appends = max_appends
        self.attempts = attempts
        self._active = [f"a{i}" for i in range(keys)]
        self._next_key = keys
        self._appends: dict[str, int] = {}

    def keys(self) -> list[str]:
        return list(self._active)

    def split_keys(self) -> list[bytes]:
        return [f"a{i}".encode() for i in range(0, self.n_keys * 8, 2)]

    def probe_write(self, key: str) -> Op | None:
        self._appends[key] = self._appends.get(key, 0) + 1
        return Op("append", key, self.next_value(), True)

    def next_op(self, rng: random.Random, state: dict) -> Op:
        slot = rng.randrange(len(self._active))
        key = self._active[slot]
        f = "read" if state.get("after_failed_write") else _weighted(rng, self.mix)
        if f == "read":
            return Op("read", key, None, False)
        count = self._appends.get(key, 0) + 1
        self._appends[key] = count
        if count >= self.max_appends:  # retire the key after this append
            self._active[slot] = f"a{self._next_key}"
            self._next_key += 1
        return Op("append", key, self.next_value(), True)

    async def invoke(self, client: Any, op: Op, timeout: float) -> Outcome:
        self.touched.add(op.key)
        kb = op.key.encode()
        if op.f == "read":
            return Outcome("ok", decode_list(await client.get(kb, timeout=timeout)))
        if op.f != "append":
            raise ValueError(f"append workload has no f {op.f!r}")
        deadline = trio.current_time() + timeout
        try:
            current = await client.get(kb, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - nothing was written yet
            _, label = classify_error(exc, False)
            return Outcome("fail", op.value, {"error": label, "message": str(exc)[:200]})
        for attempt in range(1, self.attempts + 1):
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                break
            new = encode_list(decode_list(current) + [op.value])
            ok, seen = await client.compare_and_swap(kb, current, new, timeout=remaining)
            if ok:
                return Outcome("ok", op.value, {"attempts": attempt})
            current = seen
        # every CAS was executed and refused: the element was not appended
        return Outcome("fail", op.value, {"error": "cas_contention", "attempts": self.attempts})


# -- routes ---------------------------------------------------------------------------------


class RoutesWorkload(Workload):
    """Route reads (``GetRegionByKey``) at every freshness, recording the witness fields the
    route checker reads. Meant to run with the ``churn`` nemesis (splits and merges move
    the region boundaries through the key space)."""

    name = "routes"
    model = None
    freshness = ("STRONG", "BOUNDED", "BEST_EFFORT")

    def __init__(self, *, keys: int = 16, seed: int = 0):
        super().__init__(keys=max(keys, 4), seed=seed)

    def keys(self) -> list[str]:
        return [f"r{i:03d}" for i in range(self.n_keys)]

    def final_keys(self) -> list[str]:
        return []

    def next_op(self, rng: random.Random, state: dict) -> Op:
        key = rng.choice(self.keys())
        freshness = rng.choice(self.freshness)
        request: dict[str, Any] = {"freshness": freshness, "max_root_lag": None,
                                   "required_root_token": None}
        if freshness == "BOUNDED":
            request["max_root_lag"] = rng.choice([0, 1, 2, 5, None])
            last = state.get("last_token")
            if last is not None and rng.random() < 0.5:
                request["required_root_token"] = last
        return Op("route", key, request, False)

    async def invoke(self, client: Any, op: Op, timeout: float) -> Outcome:
        from nokvpy.protocol import Freshness

        req = op.value
        with trio.fail_after(timeout):
            reply = await client.route(
                op.key.encode(),
                Freshness[req["freshness"]],
                max_root_lag=req.get("max_root_lag"),
                required_root_token=req.get("required_root_token"),
            )
        w = reply.witness
        d = reply.descriptor
        coordinator = f"coordinator-{w.coordinator_id}" if getattr(w, "coordinator_id", 0) else None
        if coordinator is None:
            addrs = getattr(client, "coordinators", None) or ["?"]
            coordinator = addrs[getattr(client, "_coord_index", 0) % len(addrs)]
        value = {
            "freshness": req["freshness"],
            "served_freshness": _name(w.served_freshness),
            "served_root_token": w.served_root_token.index,
            "current_root_token": w.current_root_token.index,
            "root_lag": w.root_lag,
            "serving_class": _name(w.serving_class),
            "coordinator": coordinator,
            "served_by_leader": w.served_by_leader,
            "catch_up_state": _name(w.catch_up_state),
            "degraded_mode": _name(w.degraded_mode),
            "sync_health": _name(getattr(w, "sync_health", "")),
            "descriptor_revision": getattr(w, "descriptor_revision", 0),
            "region_id": d.region_id if d is not None else None,
            "range": None if d is None else [_text(d.start_key), _text(d.end_key)],
            "leader_store_id": reply.leader_store_id,
        }
        return Outcome("ok", value)

    @staticmethod
    def observe(state: dict, op: Op, outcome: Outcome) -> None:
        if outcome.type == "ok":
            token = outcome.value["served_root_token"]
            state["last_token"] = max(token, state.get("last_token") or 0)


def _name(value: Any) -> str:
    return getattr(value, "name", str(value))


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _weighted(rng: random.Random, mix: tuple[tuple[str, float], ...]) -> str:
    x = rng.random() * sum(w for _, w in mix)
    for f, w in mix:
        x -= w
        if x < 0:
            return f
    return mix[-1][0]


WORKLOADS: dict[str, type[Workload]] = {
    "register": RegisterWorkload,
    "append": AppendWorkload,
    "routes": RoutesWorkload,
}


def make_workload(name: str, **options: Any) -> Workload:
    try:
        cls = WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})") from None
    return cls(**options)


# -- running ----------------------------------------------------------------------------------


async def perform(
    workload: Workload, client: Any, recorder: Any, process: int, op: Op, timeout: float,
    **extra: Any,
) -> Outcome:
    """Invoke ``op`` as ``process``, record invoke and completion, return the outcome.

    The client's own deadline is ``timeout``; the harness gives up at ``2 * timeout + 1``
    (recorded like a timeout: ``info`` for writes, ``fail`` for reads)."""
    invoke = recorder.invoke(process, op.f, op.key, op.value, **extra)
    outcome: Outcome | None = None
    with trio.move_on_after(2 * timeout + 1):
        try:
            outcome = await workload.invoke(client, op, timeout)
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a completion
            kind, label = classify_error(exc, op.write)
            outcome = Outcome(kind, op.value if kind == "info" or op.write else None,
                              {"error": label, "message": str(exc)[:200]})
    if outcome is None:
        outcome = Outcome("info" if op.write else "fail", op.value if op.write else None,
                          {"error": "harness_timeout"})
    value = outcome.value
    if outcome.type in ("fail", "info") and op.f != "read" and op.f != "route":
        value = op.value  # a failed/unknown write keeps its argument
    elif outcome.type in ("fail", "info"):
        value = None
    recorder.complete(invoke, outcome.type, value, **outcome.extra)
    return outcome


@dataclass
class WorkerStats:
    ops: int = 0
    processes: list[int] = field(default_factory=list)


async def run_worker(
    workload: Workload,
    client: Any,
    recorder: Any,
    *,
    index: int,
    concurrency: int,
    rng: random.Random,
    until: float,
    rate: float,
    op_timeout: float,
    stop: Callable[[], bool] = lambda: False,
) -> WorkerStats:
    """One client worker: operations back to back (paced to ``rate / concurrency`` per
    second) until ``trio.current_time() >= until`` or ``stop()``.

    Process ids are ``index``, ``index + concurrency``, ... (a new one after each ``info``)."""
    stats = WorkerStats()
    process = index
    stats.processes.append(process)
    state: dict = {}
    interval = concurrency / rate if rate > 0 else 0.0
    next_start = trio.current_time() + rng.uniform(0, interval)
    while True:
        if interval:
            await trio.sleep_until(min(next_start, until))
        if trio.current_time() >= until or stop():
            break
        started = trio.current_time()
        op = workload.next_op(rng, state)
        outcome = await perform(workload, client, recorder, process, op, op_timeout)
        stats.ops += 1
        observe = getattr(workload, "observe", None)
        if observe is not None:
            observe(state, op, outcome)
        state["after_failed_write"] = op.write and outcome.type != "ok"
        if outcome.type == "info":
            process += concurrency
            stats.processes.append(process)
        next_start = started + interval * rng.uniform(0.5, 1.5)
    return stats


async def final_reads(
    workload: Workload,
    client: Any,
    recorder: Any,
    *,
    first_process: int,
    timeout: float,
    op_timeout: float,
) -> dict:
    """Read every key once (retrying failed reads until ``timeout`` seconds passed), as
    ordinary ``read`` operations marked ``"final": true``. Returns ``{"values": {key:
    value}, "missing": [keys never read], "attempts": n}``."""
    values: dict[str, Any] = {}
    missing: list[str] = []
    attempts = 0
    deadline = trio.current_time() + timeout
    process = first_process
    for key in workload.final_keys():
        while True:
            attempts += 1
            outcome = await perform(
                workload, client, recorder, process, Op(workload.read_f, key, None, False),
                op_timeout, final=True,
            )
            if outcome.type == "ok":
                values[key] = outcome.value
                break
            if trio.current_time() >= deadline:
                missing.append(key)
                break
            await trio.sleep(0.5)
        process += 1
    return {"values": values, "missing": missing, "attempts": attempts}


__all__ = [
    "WORKLOADS",
    "AppendWorkload",
    "Op",
    "Outcome",
    "RegisterWorkload",
    "RoutesWorkload",
    "Workload",
    "classify_error",
    "final_reads",
    "make_workload",
    "perform",
    "run_worker",
]
