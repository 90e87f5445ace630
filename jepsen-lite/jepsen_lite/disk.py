"""Disk and power faults: a full disk, I/O errors, lost unsynced writes, torn and damaged WAL
frames, and the loss of power to every process at once.

Owns: the meaning (``DISK_FAULTS``), the seeded parameters (:func:`disk_params`), injecting
and healing each fault through the cluster control (:func:`inject`, :func:`heal`), the byte
surgery on a stopped store's write-ahead log (:func:`synced_mark`, :func:`flip_bit`,
:func:`cut`), and the judgement of every window (:func:`check_history`, ``checks["disk"]``).
Never decides whether the history is linearizable (the checkers do) and never touches a
running process's files.

Every disk fault must end in one of two documented outcomes (``docs/testing.md``):

* **recovered**: the process stops at the fault (fail-stop: a failed write or fdatasync is
  never retried) or crashes, and restarts serving with nothing acknowledged lost (the
  history's checkers judge the "nothing lost");
* **refused**: damage to durable data (a flipped bit or a cut inside the part of the WAL that
  was fdatasynced) makes the store refuse to start with a specific corrupt-log error; the
  nemesis then undoes the damage (as an operator would restore the replica) and the store
  recovers.

Anything else, in particular a store that starts on damaged durable data, is a violation.

The WAL layout this module reads is the store's data layout (``docs/storage.md``): the
segments ``<data>/raftwal/<16 hex digits>.wal`` and the synced mark ``<data>/raftwal/SYNCED``
(first LSN of the synced segment and its synced byte count, big-endian u64s, then a CRC-32).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import trio

from .faults import DISK_FAULTS as DISK_FAULT_NAMES
from .faults import FAULTS
from .history import is_nemesis

DISK_FAULTS: dict[str, str] = {name: FAULTS[name] for name in DISK_FAULT_NAMES}
WAL_DIR = "raftwal"
MARK_FILE = "SYNCED"
LOSE_UNSYNCED_ENV = {"NOKV_LOSE_UNSYNCED": "1"}
BEFORE_SYNC = "storage.wal_before_sync"
REFUSAL = "refuses to start"
REFUSE_TIMEOUT = 20.0  # seconds a damaged store has to exit with its refusal
SERVE_TIMEOUT = 30.0  # seconds a restarted process has to answer a ping


class DiskFaultError(RuntimeError):
    """A store's files are not what a disk fault needs (no WAL, no synced mark)."""


# -- parameters ------------------------------------------------------------------------------


def disk_params(fault: str, rng: random.Random, by_kind: dict[str, list[str]]
                ) -> tuple[str | None, dict]:
    """The target and parameters of a window of disk ``fault`` (seeded)."""
    stores = by_kind.get("store", [])
    metaroots = by_kind.get("metaroot", [])
    store = rng.choice(stores) if stores else None
    if fault in ("disk-full", "eio"):
        errno_name = "ENOSPC" if fault == "disk-full" else "EIO"
        spec = f'{rng.randint(1, 20)}*off->return("{errno_name}")'
        if metaroots and rng.random() < 0.25:  # metaroot commits are rarer: fail the first
            spec = f'return("{errno_name}")'
            return rng.choice(metaroots), {"failpoint": "storage.before_commit", "spec": spec}
        failpoint = "storage.wal_write" if fault == "disk-full" else rng.choice(
            ["storage.wal_write", BEFORE_SYNC])
        return store, {"failpoint": failpoint, "spec": spec}
    if fault in ("lose-unsynced", "torn-frame"):
        params: dict[str, Any] = {"failpoint": BEFORE_SYNC,
                                  "spec": f"{rng.randint(1, 40)}*off->exit",
                                  "seed": rng.randrange(2**31)}
        if fault == "torn-frame":
            params["where"] = rng.choice(["unsynced", "unsynced", "synced"])
        return store, params
    if fault == "bit-flip":
        return store, {"seed": rng.randrange(2**31)}
    if fault == "power-loss":
        return "all", {"lose_unsynced": rng.random() < 0.75}
    raise ValueError(f"not a disk fault: {fault!r}")


# -- WAL surgery (the process must be down) ------------------------------------------------------


def wal_dir(control: Any, name: str) -> Path:
    return control.data_dir(name) / WAL_DIR


def synced_mark(directory: Path) -> tuple[Path, int] | None:
    """The segment the store last fdatasynced and how many of its bytes (None: no mark)."""
    try:
        raw = (directory / MARK_FILE).read_bytes()
    except FileNotFoundError:
        return None
    if len(raw) != 20 or zlib.crc32(raw[:16]) != int.from_bytes(raw[16:], "big"):
        return None
    first, synced = int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:16], "big")
    segment = directory / f"{first:016x}.wal"
    return (segment, synced) if segment.exists() else None


def frames(data: bytes, limit: int) -> list[tuple[int, int]]:
    """(offset of the payload, its length) of every whole frame in ``data[:limit]`` (a frame is
    a 20-byte header: payload length u32, CRC-32 u32, LSN u64, 4 magic bytes; then the
    payload)."""
    out, off = [], 0
    while off + 20 <= limit:
        length = int.from_bytes(data[off:off + 4], "big")
        if off + 20 + length > limit:
            break
        out.append((off + 20, length))
        off += 20 + length
    return out


def choose_flip(data: bytes, synced: int, rng: random.Random) -> tuple[int, int, str]:
    """Where to flip one bit of the synced part: (offset, bit, where). Three times in four
    inside the last bytes of a frame's payload (an entry's data: a value, which nothing but
    the frame's checksum can tell from the original), else anywhere in the last 4 KiB."""
    payloads = [(o, n) for o, n in frames(data, synced)[-64:] if n > 0]
    if payloads and rng.random() < 0.75:
        start, length = rng.choice(payloads)
        return start + length - 1 - rng.randrange(min(length, 8)), rng.randrange(8), "payload"
    return rng.randrange(max(0, synced - 4096), synced), rng.randrange(8), "anywhere"


def flip_bit(path: Path, offset: int, bit: int) -> None:
    """Flip one bit of ``path`` in place (flipping it again undoes it)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def cut(path: Path, size: int) -> bytes:
    """Truncate ``path`` to ``size`` bytes; return what was cut (to put it back)."""
    data = path.read_bytes()
    with open(path, "r+b") as f:
        f.truncate(size)
    return data[size:]


def put_back(path: Path, tail: bytes) -> None:
    with open(path, "ab") as f:
        f.write(tail)


# -- waiting on a process --------------------------------------------------------------------


def _log_size(control: Any, name: str) -> int:
    try:
        return control.log_path(name).stat().st_size
    except OSError:
        return 0


def _log_since(control: Any, name: str, offset: int) -> str:
    try:
        with open(control.log_path(name), "rb") as f:
            f.seek(offset)
            return f.read(64 * 1024).decode(errors="replace")
    except OSError:
        return ""


async def _wait_down(control: Any, name: str, timeout: float) -> bool:
    deadline = trio.current_time() + timeout
    while control.alive(name):
        if trio.current_time() > deadline:
            return False
        await trio.sleep(0.1)
    return True


async def _wait_serving(control: Any, name: str, timeout: float) -> bool:
    deadline = trio.current_time() + timeout
    while trio.current_time() < deadline:
        if not control.alive(name):
            return False
        if await control.ping(name, timeout=1.0):
            return True
        await trio.sleep(0.2)
    return False


async def _restart(control: Any, name: str, env: dict[str, str] | None = None) -> dict:
    """Start ``name`` and judge: recovered when it serves, else what its log says."""
    offset = _log_size(control, name)
    started = await control.start(name, extra_env=env, force=True)
    serving = await _wait_serving(control, name, SERVE_TIMEOUT)
    out = {"start": started, "serving": serving}
    if not serving:
        out["log"] = _last_lines(_log_since(control, name, offset))
    return out


async def _expect_refusal(control: Any, name: str, expect: str) -> dict:
    """Start ``name`` on damaged durable data: it must exit saying it refuses and why."""
    offset = _log_size(control, name)
    started = await control.start(name, force=True)
    if started.get("action") != "restarted":  # someone else's process: not a judgement
        return {"refused": False, "exited": False, "log": [f"not started: {started}"]}
    down = await _wait_down(control, name, REFUSE_TIMEOUT)
    text = _log_since(control, name, offset)
    refused = down and REFUSAL in text and expect in text
    out: dict[str, Any] = {"refused": refused, "exited": down, "log": _last_lines(text)}
    if not down:
        await control.kill(name)  # started on damaged data: stop it before the repair
    return out


async def _refused_then_repaired(control: Any, name: str, expect: str,
                                 repair: Callable[[], None]) -> dict:
    """The judgement of damaged durable data: ``name`` must refuse to start saying
    ``expect``; then ``repair()`` (as an operator restoring the replica) and it must serve."""
    refusal = await _expect_refusal(control, name, expect)
    repair()
    restarted = await _restart(control, name)
    ok = refusal["refused"] and restarted["serving"]
    outcome = ("refused, recovered once repaired" if ok else "did not recover"
               if refusal["refused"] else "started on damaged durable data")
    return {"refusal": refusal, **restarted, "outcome": outcome, "valid": ok}


def _last_lines(text: str, n: int = 3) -> list[str]:
    return [line[-300:] for line in text.strip().splitlines()[-n:]]


# -- inject / heal ----------------------------------------------------------------------------


async def inject(control: Any, fault: str, target: str | None, params: dict) -> dict:
    if target is None:
        return {"skipped": "no target"}
    if fault in ("disk-full", "eio", "lose-unsynced", "torn-frame"):
        return {"set": await control.set_failpoint(target, params["failpoint"], params["spec"])}
    if fault == "bit-flip":
        return await control.kill(target)
    if fault == "power-loss":
        return {"killed": await control.kill_all()}
    raise ValueError(f"not a disk fault: {fault!r}")


async def heal(control: Any, fault: str, target: str | None, params: dict) -> dict:
    """Undo the fault and judge the outcome (``valid`` and ``outcome`` in the result)."""
    if target is None:
        return {"skipped": "no target", "valid": True}
    if fault in ("disk-full", "eio"):
        return await _heal_failstop(control, target, params)
    if fault in ("lose-unsynced", "torn-frame", "bit-flip"):
        control.hold(target)  # no heal or churn restart may race the surgery on its files
        try:
            if fault == "bit-flip":
                return await _heal_bit_flip(control, target, params)
            return await _heal_crash(control, fault, target, params)
        finally:
            control.release(target)
    if fault == "power-loss":
        env = LOSE_UNSYNCED_ENV if params.get("lose_unsynced") else None
        out: dict[str, Any] = {}
        for name in control.names():
            out[name] = await control.start(name, extra_env=env if name.startswith("store")
                                            else None)
        serving = {name: await _wait_serving(control, name, SERVE_TIMEOUT)
                   for name in control.names()}
        ready = "not serving"
        if all(serving.values()):
            try:  # every store up at a coordinator and the first region led again
                await control.wait_ready(SERVE_TIMEOUT)
                ready = "ready"
            except Exception as exc:  # noqa: BLE001 - judged below, with the reason
                ready = f"{type(exc).__name__}: {exc}"[:300]
        ok = ready == "ready"
        return {"outcome": "recovered" if ok else "not ready", "valid": ok, "ready": ready,
                "serving": serving, "lose_unsynced": bool(env)}
    raise ValueError(f"not a disk fault: {fault!r}")


async def _clear(control: Any, target: str, failpoint: str) -> dict:
    try:
        return await control.clear_failpoint(target, failpoint)
    except Exception as exc:  # noqa: BLE001 - a stopped process has no failpoints
        return {"error": f"{type(exc).__name__}: {exc}"}


async def _heal_failstop(control: Any, target: str, params: dict) -> dict:
    """The failed write must have stopped the process (it never retries a failed fsync)."""
    hits = 0
    if control.alive(target):
        try:
            hits = (await control.failpoint_hits(target)).get(params["failpoint"], 0)
        except Exception:  # noqa: BLE001 - it may stop between the two calls
            hits = 0
    alive_after_error = control.alive(target) and hits > 0
    cleared = await _clear(control, target, params["failpoint"])
    out: dict[str, Any] = {"cleared": cleared, "stopped": not control.alive(target)}
    if alive_after_error:
        out.update(outcome="served on after a failed write", valid=False)
        return out
    if not out["stopped"]:
        out.update(outcome="no write in the window", valid=True)
        return out
    restarted = await _restart(control, target)
    out.update(restarted, outcome="fail-stop, recovered" if restarted["serving"]
               else "did not recover", valid=restarted["serving"])
    return out


async def _heal_crash(control: Any, fault: str, target: str, params: dict) -> dict:
    out: dict[str, Any] = {"cleared": await _clear(control, target, params["failpoint"])}
    if control.alive(target):  # the failpoint never fired: crash it now
        out["kill"] = await control.kill(target)
    directory = wal_dir(control, target)
    mark = synced_mark(directory)
    if mark is None:
        out.update(outcome="no synced mark", valid=False)
        return out
    segment, synced = mark
    size = segment.stat().st_size
    out.update(segment=segment.name, synced=synced, size=size, unsynced=size - synced)
    if fault == "lose-unsynced":
        restarted = await _restart(control, target, LOSE_UNSYNCED_ENV)
        out.update(restarted, outcome="recovered" if restarted["serving"] else "did not recover",
                   valid=restarted["serving"])
        return out
    rng = random.Random(params.get("seed", 0))
    if params.get("where") == "synced" and synced > 0:
        at = rng.randrange(max(0, synced - 4096), synced)
        tail = cut(segment, at)
        out["cut_at"] = at
        out.update(await _refused_then_repaired(control, target, "shorter than",
                                                lambda: put_back(segment, tail)))
        return out
    if size > synced + 1:  # a torn write: the unsynced tail cut short
        at = rng.randrange(synced + 1, size)
        cut(segment, at)
        out["cut_at"] = at
    restarted = await _restart(control, target)
    out.update(restarted, outcome="recovered" if restarted["serving"] else "did not recover",
               valid=restarted["serving"])
    return out


async def _heal_bit_flip(control: Any, target: str, params: dict) -> dict:
    out: dict[str, Any] = {}
    if control.alive(target):
        out["kill"] = await control.kill(target)
    mark = synced_mark(wal_dir(control, target))
    if mark is None or mark[1] == 0:
        restarted = await _restart(control, target)
        out.update(restarted, outcome="nothing synced to damage", valid=restarted["serving"])
        return out
    segment, synced = mark
    offset, bit, where = choose_flip(segment.read_bytes(), synced,
                                     random.Random(params.get("seed", 0)))
    flip_bit(segment, offset, bit)
    out.update(segment=segment.name, synced=synced, offset=offset, bit=bit, where=where)
    out.update(await _refused_then_repaired(control, target, "corrupt",
                                            lambda: flip_bit(segment, offset, bit)))
    return out


# -- the check ---------------------------------------------------------------------------------


def check_history(events: Iterable[dict]) -> dict:
    """``checks["disk"]``: every disk window ended in a documented outcome (its stop event's
    ``valid``). INVALID when one did not (a store served on damaged durable data or after a
    failed write, or never came back)."""
    windows: list[dict] = []
    for event in events:
        if not is_nemesis(event) or event.get("f") != "stop":
            continue
        value = event.get("value") if isinstance(event.get("value"), dict) else {}
        if value.get("fault") not in DISK_FAULTS:
            continue
        windows.append({"fault": value.get("fault"), "target": value.get("target"),
                        "outcome": value.get("outcome"), "valid": value.get("valid")})
    bad = [w for w in windows if w["valid"] is not True]
    outcomes: dict[str, int] = {}
    for w in windows:
        key = f"{w['fault']}: {w['outcome']}"
        outcomes[key] = outcomes.get(key, 0) + 1
    return {"valid": not bad if windows else "unknown", "windows": len(windows),
            "outcomes": outcomes, "violations": bad}
