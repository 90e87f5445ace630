"""Named failpoints: crash, fail, stall or drop at a named code point, on request.

Owns: the process-wide registry of active failpoints, the gofail-like spec language, and the
per-failpoint hit counters. Never decides where failpoints are placed (call sites do), never
does I/O except `sleep` and `exit`, and costs one dict-is-empty test per call site when no
failpoint is active.

Call sites::

    failpoints.check("raftstore.before_apply")          # sync code
    await failpoints.acheck("raftstore.before_send")    # async code (sleep uses trio.sleep)
    if failpoints.check("rpc.send") is failpoints.DROP:
        return                                          # the call site implements "drop"
    if isinstance(r := failpoints.check("x"), failpoints.Return):
        return r.value

Spec language (etcd gofail style), one term or several joined by `->`::

    term    := [P%][N*]action[(arg)]
    action  := off | raise | panic | sleep(ms) | delay(ms) | drop | exit[(code)] | return[(v)]

`N*` fires N times then falls through to the next term (or turns the failpoint off);
`P%` fires with probability P percent. Examples: `raise`, `2*raise`, `50%exit`,
`sleep(200)`, `1*sleep(100)->raise`, `return("stale")`, `5*off->exit` (pass five times,
then crash).

Configuration: `NOKV_FAILPOINTS="name=spec;name2=50%exit"` is loaded at import (and again by
`load_from_env()`); at runtime `set(name, spec)`, `clear(name)`, `clear_all()`,
`list_active()` and `hits()` back the admin RPC. `NOKV_FAILPOINTS_SEED` seeds the
probability draws (otherwise `seed(n)` or OS entropy).
"""

from __future__ import annotations

import os
import random
import re
import sys
import threading
import time
from dataclasses import dataclass

__all__ = [
    "DROP",
    "EXIT_CODE",
    "FailpointError",
    "FailpointSpecError",
    "Return",
    "acheck",
    "check",
    "clear",
    "clear_all",
    "enabled",
    "hits",
    "list_active",
    "load_from_env",
    "parse",
    "reset_hits",
    "seed",
    "set",
]

# Every failpoint a call site checks, with where it is. The admin RPC refuses other names (a
# mistyped name would otherwise be accepted and never fire); tests/test_failpoints.py checks
# this table against the call sites in the source.
KNOWN: dict[str, str] = {
    "store.before_persist": "a store's ready loop, before a turn's batch is made durable",
    "store.after_persist_before_send": "a store's ready loop, after persisting, before sending",
    "store.before_apply": "a store's ready loop, before applying committed entries",
    "store.after_apply": "a store's ready loop, after applying",
    "store.publish_planned": "publishing a transition's planned event",
    "store.publish_terminal": "publishing a transition's terminal event "
                              "(return(TEXT): a permanent refusal, TERMINAL_BLOCKED)",
    "store.before_propose": "after a transition's planned publish, before its raft proposal",
    "store.after_apply_before_publish": "after a topology apply is durable, before publishing",
    "storage.before_commit": "every LMDB group commit, before it (return(ENOSPC) or "
                             "return(EIO): the commit fails with that errno)",
    "storage.after_commit": "every LMDB group commit, after it",
    "storage.wal_write": "every WAL write of a store, before write() (return(ENOSPC) or "
                         "return(EIO): the write fails with that errno)",
    "storage.wal_before_sync": "every WAL write of a store, after write() and before its "
                               "fdatasync (return(EIO): the fdatasync fails; exit: a crash "
                               "with written, unsynced bytes)",
    "storage.wal_after_sync": "every WAL write of a store, after its fdatasync",
    "metaroot.before_append": "metaroot's append handler",
    "coordinator.before_root_append": "a coordinator, before appending an event to metaroot",
    "coordinator.after_root_append": "a coordinator, after appending an event to metaroot and before answering",
    "coordinator.before_grant_issue": "a coordinator, before asking metaroot for a grant",
    "coordinator.after_seal": "a coordinator, after sealing a grant",
    "driver.tick": "every process's raft loop when ticks are due: sleep(MS) stalls the "
                   "process (CPU starvation), return(F) makes a tick last F intervals "
                   "(clock-rate skew; return(1) restores)",
}

ENV_VAR = "NOKV_FAILPOINTS"
SEED_ENV_VAR = "NOKV_FAILPOINTS_SEED"
EXIT_CODE = 137  # what a SIGKILLed process reports; `exit(code)` overrides


class FailpointError(Exception):
    """Raised at a call site by an active `raise` failpoint."""

    def __init__(self, name: str):
        super().__init__(f"failpoint {name!r} fired")
        self.name = name


class FailpointSpecError(ValueError):
    """A failpoint spec (or the NOKV_FAILPOINTS variable) does not parse."""


class _Drop:
    __slots__ = ()

    def __repr__(self) -> str:
        return "failpoints.DROP"


DROP = _Drop()  # returned by check()/acheck(): the call site should drop the operation


@dataclass(slots=True, frozen=True)
class Return:
    """Returned by check()/acheck() for a `return(value)` failpoint."""

    value: object = None


_ACTIONS = frozenset({"off", "raise", "panic", "sleep", "delay", "drop", "exit", "return"})
_TERM = re.compile(
    r"^\s*(?:(?P<pct>\d+(?:\.\d+)?)%)?\s*(?:(?P<count>\d+)\*)?\s*"
    r"(?P<action>[a-z]+)\s*(?:\((?P<arg>.*)\))?\s*$"
)


@dataclass(slots=True)
class _Term:
    action: str
    arg: object = None
    probability: float = 1.0  # 0 < p <= 1
    remaining: int | None = None  # None = unlimited


class _Failpoint:
    __slots__ = ("name", "spec", "terms")

    def __init__(self, name: str, spec: str, terms: list[_Term]):
        self.name = name
        self.spec = spec
        self.terms = terms


def _parse_arg(action: str, raw: str | None, spec: str) -> object:
    if action in ("sleep", "delay"):
        if raw is None:
            raise FailpointSpecError(f"{spec!r}: {action} needs milliseconds, e.g. {action}(100)")
        try:
            ms = float(raw)
        except ValueError:
            raise FailpointSpecError(f"{spec!r}: {action}({raw}) is not a number") from None
        if ms < 0:
            raise FailpointSpecError(f"{spec!r}: {action} must not be negative")
        return ms / 1000.0
    if action == "exit":
        if raw is None or raw.strip() == "":
            return EXIT_CODE
        try:
            return int(raw)
        except ValueError:
            raise FailpointSpecError(f"{spec!r}: exit({raw}) needs an integer code") from None
    if action == "return":
        if raw is None:
            return None
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            return raw[1:-1]
        if raw in ("true", "false"):
            return raw == "true"
        try:
            return int(raw)
        except ValueError:
            return raw
    if raw is not None and raw.strip():
        raise FailpointSpecError(f"{spec!r}: {action} takes no argument")
    return None


def parse(spec: str) -> list[_Term]:
    """Parse one failpoint spec into its terms; raise FailpointSpecError if malformed."""
    terms = []
    for part in spec.split("->"):
        m = _TERM.match(part)
        if m is None:
            raise FailpointSpecError(f"cannot parse failpoint term {part!r} in {spec!r}")
        action = m["action"]
        if action not in _ACTIONS:
            raise FailpointSpecError(
                f"unknown failpoint action {action!r} in {spec!r} (known: {sorted(_ACTIONS)})"
            )
        pct = float(m["pct"]) if m["pct"] is not None else 100.0
        if not 0 < pct <= 100:
            raise FailpointSpecError(f"{spec!r}: probability must be in (0, 100]%")
        count = int(m["count"]) if m["count"] is not None else None
        if count == 0:
            raise FailpointSpecError(f"{spec!r}: a count of 0 never fires; use 'off'")
        arg = _parse_arg(action, m["arg"], spec)
        terms.append(_Term("raise" if action == "panic" else action, arg, pct / 100.0, count))
    return terms


# The registry. Invariant: `_active` holds only failpoints with at least one live term, so the
# off path is `if not _active`.
_active: dict[str, _Failpoint] = {}
_hits: dict[str, int] = {}
_lock = threading.Lock()
_rng = random.Random()


def set(name: str, spec: str) -> None:  # noqa: A001 - the admin verb
    """Activate failpoint `name` with `spec` (replacing any previous spec); "off" clears it."""
    if not name or any(c in name for c in "=;\n"):
        raise FailpointSpecError(f"bad failpoint name {name!r}")
    terms = parse(spec)
    live = [t for t in terms if t.action != "off"]
    with _lock:
        if not live:
            _active.pop(name, None)
        else:
            _active[name] = _Failpoint(name, spec.strip(), terms)


def clear(name: str) -> None:
    """Deactivate one failpoint; "" deactivates all (the admin RPC convention)."""
    with _lock:
        if name:
            _active.pop(name, None)
        else:
            _active.clear()


def clear_all() -> None:
    clear("")


def list_active() -> dict[str, str]:
    """name -> spec of every active failpoint."""
    with _lock:
        return {name: fp.spec for name, fp in sorted(_active.items())}


def hits() -> dict[str, int]:
    """name -> number of times an action fired (kept after the failpoint is cleared)."""
    with _lock:
        return dict(sorted(_hits.items()))


def reset_hits() -> None:
    with _lock:
        _hits.clear()


_remote_enabled = True  # the serve commands set it from --enable-failpoints


def set_remote_enabled(on: bool) -> None:
    """May failpoints and fault rules be set over the wire in this process? (The RPC server
    asks `remote_enabled()` for FailpointSet / FailpointClear / SetFaultRules.)"""
    global _remote_enabled
    _remote_enabled = bool(on)


def remote_enabled() -> bool:
    return _remote_enabled


def enabled() -> bool:
    return bool(_active)


def seed(value: int) -> None:
    """Seed the probability draws (for reproducible `P%` failpoints)."""
    _rng.seed(value)


def load_from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """(Re)load failpoints from NOKV_FAILPOINTS; returns what was set. Existing runtime
    failpoints stay unless the variable names them."""
    env = os.environ if environ is None else environ
    raw_seed = env.get(SEED_ENV_VAR)
    if raw_seed:
        seed(int(raw_seed))
    raw = env.get(ENV_VAR, "")
    loaded: dict[str, str] = {}
    for item in raw.split(";"):
        if not item.strip():
            continue
        name, sep, spec = item.partition("=")
        if not sep or not name.strip():
            raise FailpointSpecError(f"{ENV_VAR}: expected name=spec, got {item!r}")
        parse(spec)  # validate all before activating any
        loaded[name.strip()] = spec.strip()
    for name, spec in loaded.items():
        set(name, spec)
    return loaded


def _fire(name: str) -> tuple[str, object] | None:
    """Pick the action to perform for one evaluation of `name` (None = do nothing)."""
    with _lock:
        fp = _active.get(name)
        if fp is None:
            return None
        for term in fp.terms:
            if term.remaining == 0:
                continue
            if term.probability < 1.0 and _rng.random() >= term.probability:
                return None
            if term.remaining is not None:
                term.remaining -= 1
                if term.remaining == 0 and all(t.remaining == 0 for t in fp.terms):
                    del _active[name]
            if term.action == "off":  # e.g. "3*off->exit": pass 3 times, then exit
                return None
            _hits[name] = _hits.get(name, 0) + 1
            return term.action, term.arg
        del _active[name]  # every term exhausted
        return None


def _exit(name: str, code: int) -> None:
    try:
        os.write(2, f"failpoint {name!r}: exit({code})\n".encode())
    except OSError:
        pass
    os._exit(code)


def check(name: str) -> object:
    """Evaluate failpoint `name` from sync code.

    Returns None (nothing to do), DROP, or Return(value); raises FailpointError for `raise`;
    sleeps the calling thread for `sleep`/`delay`; never returns for `exit`.
    """
    if not _active:
        return None
    fired = _fire(name)
    if fired is None:
        return None
    action, arg = fired
    if action in ("sleep", "delay"):
        time.sleep(arg)  # type: ignore[arg-type]
        return None
    return _act(name, action, arg)


async def acheck(name: str) -> object:
    """Evaluate failpoint `name` from async code: like check(), but sleeps with trio.sleep."""
    if not _active:
        return None
    fired = _fire(name)
    if fired is None:
        return None
    action, arg = fired
    if action in ("sleep", "delay"):
        import trio

        await trio.sleep(arg)  # type: ignore[arg-type]
        return None
    return _act(name, action, arg)


def _act(name: str, action: str, arg: object) -> object:
    if action == "raise":
        raise FailpointError(name)
    if action == "exit":
        _exit(name, arg)  # type: ignore[arg-type]
    if action == "drop":
        return DROP
    if action == "return":
        return Return(arg)
    return None


if os.environ.get(ENV_VAR) or os.environ.get(SEED_ENV_VAR):
    try:
        load_from_env()
    except FailpointSpecError as exc:  # loud: a mistyped failpoint must not be silently off
        print(f"nokvpy.failpoints: {exc}", file=sys.stderr)
        raise
