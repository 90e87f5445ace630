"""The ``watch`` workload: writers on keys under a few prefixes, watchers on each prefix.

Owns: the key layout (``prefixes`` prefixes ``w0/``, ``w1/``, ... of ``keys`` keys each; the
split keys are every prefix start and every key, so churn splits and merges move the region
boundaries through and between the prefixes), the writers' mix (register operations with
unique integer values: a ``write`` records the raft index its put applied at), and the
watchers (:class:`WatchSession`): ``watchers`` of them (default 10), round robin over the
prefixes, each a ``Client.watch(prefix, prefix=True)`` on its own client, opened before the
writers start and followed for the whole run. Every event a watcher is handed goes to
``RUN/watch-events.jsonl`` as it is handed (see :mod:`.watchcheck` for the records); the
history holds one ``watch`` operation per watcher (invoked when it begins opening, ``ok``
when it saw every marker, else ``info``).

Odd-numbered watchers close their watch every ``resume_every`` seconds (0.5-1.5 x, seeded)
and go on from its resume token (``Watch.segments()``); a watcher whose watch fails with an
error other than ``WatchCompactedError`` goes on from its token too (``resumes`` in the
check). ``WatchCompactedError`` ends the watcher (outcome ``compacted``).

The end (:meth:`WatchSession.finish`, after the heal): one marker write per key (retried
until acknowledged, recorded as an ordinary ``write`` marked ``"marker": true``). A key's
changes come in order, but changes of keys in different regions do not, so a watcher is done
when it saw the acknowledged marker of EVERY key of its prefix (then ``linger`` seconds more);
one that does not within ``marker_timeout`` seconds ends with outcome ``deadline``.

``watch_keep`` (workload option): start every store with ``--watch-keep N`` (a tiny change
log on purpose): ``compacted`` is then an expected outcome, not a violation.

Never decides whether what the watchers saw is right (:mod:`.watchcheck`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from . import (
    kvleaseload,  # noqa: F401 - adds the kvlease workload to WORKLOADS
    txnload,  # noqa: F401 - adds the txn workload to WORKLOADS
)
from .watchcheck import WATCH_EVENTS, check_run_dir
from .workloads import (
    WORKLOADS,
    Op,
    Outcome,
    RecordingSession,
    RegisterWorkload,
    decode_int,
    encode_int,
    make_workload,
    perform,
)

WATCH_PROCESS_BASE = 3_000_000  # the history's `watch` operation of watcher i
MARKER_PROCESS_BASE = 3_100_000  # the marker writes
WATCH_CLIENT_BASE = 200  # client identity index of watcher i (the marker client: 199)
MAX_ERRORS = 100  # failed watches a watcher goes on from (from its token) before it gives up


class WatchWorkload(RegisterWorkload):
    """Register operations (write / cas / read, unique values) on ``keys`` keys under each of
    ``prefixes`` prefixes, watched by ``watchers`` watchers for the whole run."""

    name = "watch"
    model = "register"
    mix = (("read", 0.25), ("write", 0.65), ("cas", 0.1))

    def __init__(self, *, keys: int = 5, seed: int = 0, prefixes: int = 3, watchers: int = 10,
                 resume_every: float = 8.0, marker_timeout: float = 60.0,
                 open_timeout: float = 30.0, linger: float = 1.0, watch_keep: int = 0,
                 repair_tokens: int = 0):
        super().__init__(keys=keys, seed=seed)
        if prefixes < 1 or watchers < 1 or keys < 1:
            raise ValueError("the watch workload needs keys, prefixes and watchers >= 1")
        self.n_prefixes = int(prefixes)
        self.n_watchers = int(watchers)
        self.resume_every = float(resume_every)
        self.marker_timeout = float(marker_timeout)
        self.open_timeout = float(open_timeout)
        self.linger = float(linger)
        self.watch_keep = int(watch_keep)
        self.repair_tokens = bool(repair_tokens)

    def prefixes(self) -> list[str]:
        return [f"w{p}/" for p in range(self.n_prefixes)]

    def keys(self) -> list[str]:
        return [f"{p}{j:02d}" for p in self.prefixes() for j in range(self.n_keys)]

    def split_keys(self) -> list[bytes]:
        return [p.encode() for p in self.prefixes()] + [k.encode() for k in self.keys()]

    async def invoke(self, client: Any, op: Op, timeout: float) -> Outcome:
        if op.f != "write":
            return await super().invoke(client, op, timeout)
        self.touched.add(op.key)
        index = await client.put(op.key.encode(), encode_int(op.value), timeout=timeout)
        return Outcome("ok", op.value, {"applied_index": index})

    @classmethod
    def store_args(cls, options: dict) -> list[str]:
        keep = int(options.get("watch_keep") or 0)
        return ["--watch-keep", str(keep)] if keep > 0 else []

    def session(self, new_client: Callable[[int], Any], recorder: Any, run_dir: str | Path,
                log: Callable[[str], None], op_timeout: float = 2.0) -> WatchSession:
        return WatchSession(self, new_client, recorder, Path(run_dir), log, op_timeout)

    @staticmethod
    def run_checks(history: Any, run_dir: str | Path) -> dict[str, dict]:
        return {"watch": check_run_dir(history, run_dir)}


@dataclass
class Watcher:
    index: int
    prefix: str
    keys: list[str]
    seen: dict[str, set] = field(default_factory=dict)
    events: int = 0
    resumes: int = 0
    errors: int = 0
    complete: bool = False
    outcome: str | None = None
    detail: Any = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finished: trio.Event = field(default_factory=trio.Event)
    ready: trio.Event = field(default_factory=trio.Event)  # its first open attempt ended


class WatchSession(RecordingSession):
    """The watchers of one run: ``async with`` opens every watch (before the writers
    start); :meth:`finish` writes the markers and ends them; leaving the block stops any
    still running (outcome ``aborted``: the run ended early)."""

    def __init__(self, workload: WatchWorkload, new_client: Callable[[int], Any], recorder: Any,
                 run_dir: Path, log: Callable[[str], None], op_timeout: float):
        super().__init__(new_client, run_dir / WATCH_EVENTS)
        self.workload = workload
        self.recorder = recorder
        self.log = log
        self.op_timeout = op_timeout
        self.markers: dict[str, Any] = {}  # key -> its acknowledged marker value
        self.markers_failed: set[str] = set()
        prefixes = workload.prefixes()
        keys = workload.keys()
        self.watchers = [
            Watcher(i, prefixes[i % len(prefixes)],
                    [k for k in keys if k.startswith(prefixes[i % len(prefixes)])])
            for i in range(workload.n_watchers)]
        self._all_done = trio.Event()

    async def __aenter__(self) -> WatchSession:
        wl = self.workload
        nursery = await self._open({"type": "config", "prefixes": wl.prefixes(),
                                    "keys": wl.keys(), "watchers": wl.n_watchers,
                                    "resume_every": wl.resume_every,
                                    "watch_keep": wl.watch_keep,
                                    "expect_compacted": wl.watch_keep > 0})
        for w in self.watchers:  # not nursery.start: a watch holds a nursery of its own
            nursery.start_soon(self._run_watcher, w)
        for w in self.watchers:
            await w.ready.wait()
        opened = sum(1 for w in self.watchers if w.outcome is None)
        self.log(f"watch: {opened} of {len(self.watchers)} watchers open on "
                 f"{', '.join(wl.prefixes())}")
        return self

    async def __aexit__(self, *exc: Any) -> bool:
        await self._stop("aborted")
        # the watcher tasks never raise; the body's exception (if any) goes on unwrapped
        await self._close()
        return False

    # ---- the end -------------------------------------------------------------------------

    async def finish(self) -> dict:
        """Write one marker per key, wait until every watcher saw its prefix's markers (at
        most ``marker_timeout`` s), ``linger`` s more, then end the watchers."""
        wl = self.workload
        t0 = trio.current_time()
        client = self._client(WATCH_CLIENT_BASE - 1)
        process = MARKER_PROCESS_BASE
        deadline = t0 + wl.marker_timeout
        for key in wl.keys():
            while True:
                op = Op("write", key, wl.next_value(), True)
                outcome = await perform(wl, client, self.recorder, process, op,
                                        self.op_timeout, marker=True)
                if outcome.type == "ok":
                    self.markers[key] = op.value
                    break
                if outcome.type == "info":
                    process += 1
                if trio.current_time() >= deadline:
                    self.markers_failed.add(key)
                    break
                await trio.sleep(0.2)
            process += 1
        for w in self.watchers:
            self._update(w)
        self._maybe_all_done()
        with trio.move_on_at(max(deadline, trio.current_time() + 5.0)):
            await self._all_done.wait()
        waited = trio.current_time() - t0
        await trio.sleep(wl.linger)
        await self._stop("deadline")
        outcomes: dict[str, int] = {}
        for w in self.watchers:
            outcomes[w.outcome or "?"] = outcomes.get(w.outcome or "?", 0) + 1
        self.log(f"watch: markers written for {len(self.markers)} keys "
                 f"({len(self.markers_failed)} never acknowledged), watchers done after "
                 f"{waited:.1f}s: {outcomes}")
        return {"markers": len(self.markers), "markers_failed": sorted(self.markers_failed),
                "wait_s": round(waited, 3), "outcomes": outcomes}

    async def _stop(self, outcome: str) -> None:
        for w in self.watchers:
            if w.outcome is None:
                w.outcome = "complete" if w.complete else self._unfinished(w, outcome)
            w.scope.cancel()
        for w in self.watchers:
            await w.finished.wait()

    def _unfinished(self, w: Watcher, outcome: str) -> str:
        if outcome == "deadline" and any(k in self.markers_failed for k in w.keys):
            w.detail = "a marker write of the prefix was never acknowledged"
            return "no_marker"
        missing = [k for k in w.keys if self.markers.get(k) not in w.seen.get(k, ())]
        w.detail = {"markers_not_seen": missing[:10], "events": w.events}
        return outcome

    def _update(self, w: Watcher) -> None:
        if w.complete or len(self.markers) + len(self.markers_failed) < len(self.workload.keys()):
            return
        if all(k in self.markers and self.markers[k] in w.seen.get(k, ()) for k in w.keys):
            w.complete = True

    def _maybe_all_done(self) -> None:
        if all(w.complete or w.outcome is not None for w in self.watchers):
            self._all_done.set()

    # ---- one watcher ---------------------------------------------------------------------

    async def _run_watcher(self, w: Watcher) -> None:
        """Follow the prefix until stopped; never raises (every failure is an outcome)."""
        invoke = self.recorder.invoke(WATCH_PROCESS_BASE + w.index, "watch", w.prefix, None,
                                      watcher=w.index)
        try:
            client = self._client(WATCH_CLIENT_BASE + w.index)
            rng = random.Random(f"{self.workload.seed}-watch-{w.index}")
            token = None
            with w.scope:
                while w.outcome is None:
                    token = await self._one_watch(w, client, token, rng)
        except Exception as exc:  # noqa: BLE001 - the harness's own failure is an outcome
            w.outcome, w.detail = "error", describe(exc)
        finally:
            w.ready.set()
            if w.outcome is None:
                w.outcome = "complete" if w.complete else "aborted"
            self._write({"type": "end", "watcher": w.index, "outcome": w.outcome,
                         "detail": w.detail, "events": w.events, "resumes": w.resumes,
                         "time": time.monotonic_ns()})
            value = {"outcome": w.outcome, "events": w.events, "resumes": w.resumes}
            self.recorder.complete(invoke, "ok" if w.outcome == "complete" else "info", value,
                                   **({"error": w.outcome} if w.outcome != "complete" else {}))
            w.finished.set()
            self._maybe_all_done()

    async def _one_watch(self, w: Watcher, client: Any, token: Any,
                         rng: random.Random) -> Any:
        """Open one watch (from ``token`` if any) and follow it until it fails or it is time
        to resume; returns the token to go on from."""
        from nokvpy.client import WatchCompactedError

        wl = self.workload
        opening = time.monotonic_ns()
        watch = (client.watch(w.prefix.encode(), prefix=True) if token is None
                 else client.watch(b"", resume=token))
        opened = failed = False
        with trio.move_on_after(wl.open_timeout) as open_scope:
            try:
                async with watch:
                    open_scope.deadline = math.inf
                    opened = True
                    self._write({"type": "open", "watcher": w.index, "prefix": w.prefix,
                                 "opening": opening, "opened": time.monotonic_ns(),
                                 "resume": token is not None, "token": _token(token)})
                    w.resumes += token is not None
                    w.ready.set()
                    every = wl.resume_every if w.index % 2 == 1 else 0.0
                    resume_at = (trio.current_time() + every * rng.uniform(0.5, 1.5)
                                 if every > 0 else math.inf)
                    try:
                        with trio.move_on_at(resume_at):
                            async for ev in watch:
                                self._event(w, ev)
                    except WatchCompactedError as exc:
                        w.outcome, w.detail = "compacted", _compacted(exc)
                    finally:
                        token = watch.segments()
            except Exception as exc:  # noqa: BLE001 - a failed watch: go on from the token
                self._error(w, "follow" if opened else "open", exc)
                failed = True
                if token is not None and wl.repair_tokens:
                    token = self._repair(w, token)
        if open_scope.cancelled_caught:
            self._error(w, "open", TimeoutError(f"not open after {wl.open_timeout:g}s"))
        w.ready.set()
        if w.outcome is None and w.errors > MAX_ERRORS:
            w.outcome, w.detail = "error", f"{w.errors} failed watches"
        if w.outcome is None and (failed or not opened):
            await trio.sleep(0.2 if opened else 0.5)
        return token

    def _repair(self, w: Watcher, token: list) -> list:
        """The token clipped to the prefix, empty segments dropped (``repair_tokens``: go on
        past a token the watch itself could not go on from; recorded, and a violation)."""
        from nokvpy.client.watch import WatchSegment, prefix_end

        lo, hi = w.prefix.encode(), prefix_end(w.prefix.encode())
        fixed = [WatchSegment(max(s.start, lo), min(s.end or hi, hi), s.version, s.index)
                 for s in token]
        fixed = [s for s in fixed if s.start < s.end]
        if fixed != list(token):
            self._write({"type": "repair", "watcher": w.index, "token": _token(token),
                         "repaired": _token(fixed), "time": time.monotonic_ns()})
        return fixed or token

    def _error(self, w: Watcher, where: str, exc: BaseException) -> None:
        w.errors += 1
        self._write({"type": "error", "watcher": w.index, "where": where,
                     "error": describe(exc), "time": time.monotonic_ns()})

    def _event(self, w: Watcher, ev: Any) -> None:
        key = ev.key.decode("utf-8", "backslashreplace")
        value = decode_int(ev.value)
        self._write({"type": "event", "watcher": w.index, "kind": ev.kind, "key": key,
                     "value": value, "region_id": ev.region_id, "version": ev.version,
                     "index": ev.index, "seq": ev.seq, "time": time.monotonic_ns()})
        w.events += 1
        w.seen.setdefault(key, set()).add(value)
        if not w.complete and self.markers.get(key) == value:
            self._update(w)
            if w.complete:
                self._maybe_all_done()


def describe(exc: BaseException) -> str:
    """``Type: message`` of an error, of each one inside an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)[:300]
    reason = getattr(exc, "reason", None)
    label = f"{type(exc).__name__}:{reason}" if reason and reason != "error" else type(exc).__name__
    return f"{label}: {exc}"[:300]


def _token(segments: Any) -> list | None:
    """A resume token as JSON: [start, end, version, index] per segment."""
    if segments is None:
        return None
    return [[seg.start.decode("utf-8", "backslashreplace"),
             seg.end.decode("utf-8", "backslashreplace"), seg.version, seg.index]
            for seg in segments]


def _compacted(exc: Any) -> dict:
    seg = exc.segment
    return {"message": str(exc)[:300], "region_id": exc.region_id, "floor": list(exc.floor),
            "segment": [seg.start.decode("utf-8", "backslashreplace"),
                        seg.end.decode("utf-8", "backslashreplace"), seg.version, seg.index]}


WORKLOADS["watch"] = WatchWorkload

__all__ = ["WORKLOADS", "WatchSession", "WatchWorkload", "make_workload"]
