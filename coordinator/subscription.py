"""The root subscription: keeps this coordinator's rooted view current (DESIGN 4.2, 4.3).

Owns: the Watch stream from metaroot (from the served token), feeding each item into the
pure `RootView`, which swaps immutable `RootCatalog`s: each one an index over the
coordinator's `RootState` mirror at the served token, so the catalog it serves and the mirror
it assesses against are one fold of rooted events (`RootCatalog.advance`), never two; the
bookkeeping of each folded event (the transition history, allocator fences before a grant,
counters); checkpoint installs (bootstrap_required) and snapshot reloads (a gap, or a served token
behind the retained tail); reconnects with jittered backoff across the metaroot peers; the
~100 ms tick that lets an unreachable root turn into ROOT_UNAVAILABLE; the last catch-up
steps; the transition history seen in the event stream; the pause switch of the
PauseCatchUp test control; and stall detection: every entry point first checks how long ago
the process last ran one (the tick keeps that under TICK_INTERVAL while the loop is live), and
a gap over `stall_after` (SIGSTOP, CPU starvation, a long synchronous step) is reported to the
view (`RootView.on_stall`) before anything queued during it is handled, and starts a root
probe at once. Leader confirmations are timed by when they were asked for, not answered.
Watch items confirm root's truth only when the serving peer marked them `from_leader` (the
leader, holding its quorum lease); a follower's items are heard (tokens, catalog, "heard
within the window"), never confirming, so a lone follower cannot keep the view FRESH
(issue 22). Test-only: NOKV_UNSAFE_FOLLOWER_KEEPALIVE=1 treats every watch item as the
leader's (the old, unsafe rule), to show the process tests catch it.
Waiters block in `wait_served` until a token is incorporated.

Never: moves the served token backward (RootView refuses it), writes to metaroot, or decides
anything about serving (coordinator.serving does). Time is trio.current_time() only.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter, deque
from typing import Any

import trio

from coordinator.rootcatalog import CatalogFoldError, RootCatalog
from coordinator.rootview import ReadState, RootView
from metaroot.state import RootState
from nokvpy.protocol.enums import (
    CANCEL_KINDS,
    PLANNED_KINDS,
    TERMINAL_KINDS,
    CatchUpAction,
    EventKind,
    TransitionPhase,
)
from nokvpy.protocol.grants import GrantIssued, PendingTransition, TransitionEntry
from nokvpy.protocol.metaroot_rpc import SnapshotRequest, WatchItem, WatchRequest
from nokvpy.protocol.records import CatchUpStep, CommittedEvent, RootToken
from nokvpy.protocol.transitions import shape, transition_id, transition_kind

log = logging.getLogger("nokvpy.coordinator.subscription")

TICK_INTERVAL = 0.1
# A gap this long between two entry points means the process was not running (the tick runs
# every TICK_INTERVAL): what was queued meanwhile is as old as the gap.
STALL_AFTER = 0.5
KEEPALIVE_MS = 300
RECONNECT_MIN = 0.05
RECONNECT_MAX = 2.0


_NO_STATE = RootState()


def catalog_from_state(state: RootState) -> RootCatalog:
    """The catalog of a rooted state (after a checkpoint or a reload): an index over it."""
    return RootCatalog.of(state)


def _history_entry(before: RootState, ce: CommittedEvent) -> TransitionEntry | None:
    """A completed / cancelled transition seen in the stream (None for other events)."""
    kind = ce.event.kind
    if kind in TERMINAL_KINDS:
        phase = TransitionPhase.COMPLETED
    elif kind in CANCEL_KINDS:
        phase = TransitionPhase.CANCELLED
    elif kind == EventKind.REGION_TOMBSTONED:
        phase = TransitionPhase.COMPLETED
    else:
        return None
    tid = transition_id(ce.event)
    tkind = transition_kind(ce.event)
    if not tid or tkind is None:
        return None
    pending: PendingTransition | None = before.pending.get(tid)
    source = pending.source_token if pending is not None else ce.token
    if kind == EventKind.REGION_TOMBSTONED:
        base = before.descriptor(ce.event.payload.region_id)
        bases, targets = ((base,) if base is not None else ()), ()
        region_ids: tuple[int, ...] = (ce.event.payload.region_id,)
    else:
        bases, targets = shape(ce.event)
        region_ids = tuple(sorted({d.region_id for d in (*bases, *targets)}))
    return TransitionEntry(tid, tkind, phase, region_ids, tuple(targets), tuple(bases), source)


class Subscription:
    """Owns the RootView, whose catalog is the RootState mirror; one task feeds it (`run`)."""

    def __init__(self, meta: Any, staleness_window: float, *, keepalive_ms: int = KEEPALIVE_MS,
                 max_steps: int = 64, max_history: int = 256,
                 rng: random.Random | None = None, stall_after: float = STALL_AFTER) -> None:
        self.meta = meta
        self.view = RootView(staleness_window, empty=RootCatalog.empty)
        self.keepalive_ms = keepalive_ms
        self.steps: deque[tuple[float, CatchUpStep]] = deque(maxlen=max_steps)
        self.history: deque[TransitionEntry] = deque(maxlen=max_history)
        self.paused = False
        self.counters: Counter[str] = Counter()
        self.last_error = ""
        self.connected_to = ""
        # grant id -> (id_fence, tso_fence) in the rooted state just before that grant was
        # first issued: the exact start of a freshly issued allocator window.
        self.fence_before_grant: dict[str, tuple[int, int]] = {}
        self._rng = rng or random.Random()
        self._changed = trio.Event()
        self._stream_scope: trio.CancelScope | None = None
        self._last_state = None
        self.stall_after = stall_after
        # test-only (NOKV_UNSAFE_HOLDER_PAUSE): no stall detection, confirmations count when
        # answered (the old rules)
        self.unsafe = False
        self._last_alive: float | None = None  # last time an entry point ran (monotonic)
        self.last_stall: tuple[float, float] | None = None  # (since, noticed at)
        self._probe_kick = trio.Event()
        # test-only (NOKV_UNSAFE_FOLLOWER_KEEPALIVE=1): every watch item confirms (old rule)
        self.unsafe_follower_keepalive = (
            os.environ.get("NOKV_UNSAFE_FOLLOWER_KEEPALIVE") == "1")
        if self.unsafe_follower_keepalive:
            log.warning("NOKV_UNSAFE_FOLLOWER_KEEPALIVE=1: follower keepalives confirm root "
                        "freshness (unsafe, test only)")

    # ---- reads -------------------------------------------------------------------------

    @property
    def catalog(self) -> RootCatalog | None:
        return self.view.catalog

    @property
    def state(self) -> RootState:
        """The RootState mirror: the state the served catalog indexes (token ==
        served_token; an empty state while there is no catalog)."""
        catalog = self.view.catalog
        return catalog.root if catalog is not None else _NO_STATE

    @property
    def served_token(self) -> RootToken:
        return self.view.served_token

    @property
    def current_token(self) -> RootToken:
        return self.view.current_token

    def snapshot(self, degraded_flags=()) -> tuple[RootCatalog | None, ReadState, RootState]:
        now = self._alive()
        catalog, rs = self.view.snapshot(now, degraded_flags)
        return catalog, rs, self.state

    def read_state(self, degraded_flags=()) -> ReadState:
        return self.view.read_state(self._alive(), degraded_flags)

    def _alive(self) -> float:
        """Now; first reports a stall if no entry point ran for `stall_after` seconds."""
        now = trio.current_time()
        last = self._last_alive
        if last is not None and now - last > self.stall_after and not self.unsafe:
            self.counters["stalls"] += 1
            self.last_stall = (last, now)
            log.warning("loop stalled for %.2fs: root freshness must be re-confirmed",
                        now - last)
            self._record(self.view.on_stall(last, now))
            self._forgive_metaroot()
            self._probe_kick.set()
        if last is None or now > last:
            self._last_alive = now
        return now

    def _forgive_metaroot(self) -> None:
        """A metaroot call that timed out across a stall of this process says nothing about
        the peer it went to, yet the metaroot client would avoid that peer, typically the
        healthy leader, for seconds (nokvpy.client.failover): forgive every peer now and
        the failures reported until every attempt in flight across the stall has ended."""
        suspects = getattr(self.meta, "suspects", None)
        if suspects is None or not hasattr(suspects, "forgive_all"):
            return
        suspects.forgive_all(trio.current_time(), float(getattr(self.meta, "attempt_timeout", 3.0)))
        self.counters["suspects_forgiven"] += 1

    async def wait_served(self, index: int, timeout: float) -> bool:
        """Wait until the served catalog incorporates root index `index` (False on timeout)."""
        with trio.move_on_after(timeout):
            while self.view.served_token.index < index:
                await self._changed.wait()
            return True
        return self.view.served_token.index >= index

    async def wait_change(self) -> None:
        await self._changed.wait()

    # ---- controls ----------------------------------------------------------------------

    def set_paused(self, paused: bool) -> None:
        """PauseCatchUp: while paused, deltas are not applied (only root's current token is
        noted, so lag grows); resuming re-subscribes from the served token."""
        was = self.paused
        self.paused = paused
        if was and not paused:
            self.restart_stream()

    def restart_stream(self) -> None:
        if self._stream_scope is not None:
            self._stream_scope.cancel()

    def note_confirmed(self, token: RootToken, asked_at: float | None = None) -> None:
        """The metaroot leader confirmed `token` as its current committed token, in a round
        asked for at `asked_at` (trio time before the confirm call; None: now)."""
        now = self._alive()
        if asked_at is None or self.unsafe:
            asked_at = now
        self._record(self.view.on_confirmed(token, asked_at, now))

    # ---- the task ----------------------------------------------------------------------

    async def run(self, confirm=None, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Watch and tick forever. `confirm` (an async () -> RootToken, the batched
        ConfirmToken round) enables the root probe."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._tick_loop)
            if confirm is not None:
                nursery.start_soon(self._probe_loop, confirm)
            task_status.started()
            await self._watch_loop()

    async def _probe_loop(self, confirm) -> None:
        """Ask the metaroot leader for its current token every third of the staleness
        window. The watched peer may be a follower cut off from the leader that keeps sending
        keepalives with a stale token; the leader's answer exposes the lag (and a failed
        probe makes the view unconfirmed, never FRESH). A stream that stays behind a
        confirmed token while connected to a non-leader is restarted on another peer."""
        period = max(0.2, self.view.staleness_window / 3)
        behind_since: float | None = None
        while True:
            with trio.move_on_after(period * (0.8 + 0.4 * self._rng.random())):
                await self._probe_kick.wait()  # a stall: re-confirm at once
            self._probe_kick = trio.Event()
            if self.paused:
                continue
            asked = trio.current_time()  # the round starts after this (ConfirmBatcher)
            try:
                token = await confirm()
            except Exception:  # noqa: BLE001 - recorded as unreachability
                self.counters["root_probe_failures"] += 1
                self._record(self.view.on_root_unreachable(self._alive()))
                if self.last_stall is not None and asked <= self.last_stall[1]:
                    # it was in flight across a stall: no verdict on metaroot, ask again now
                    self._probe_kick.set()
                continue
            self.counters["root_probes"] += 1
            self.note_confirmed(token, asked)
            now = trio.current_time()
            leader = getattr(self.meta, "leader", None)
            if self.view.served_token.index < token.index and leader \
                    and self.connected_to != leader:
                if behind_since is None:
                    behind_since = now
                elif now - behind_since > 2 * period:
                    self.counters["watch_rotations"] += 1
                    behind_since = None
                    self.restart_stream()
            else:
                behind_since = None

    async def _tick_loop(self) -> None:
        self._alive()
        while True:
            await trio.sleep(TICK_INTERVAL)
            self._record(self.view.tick(self._alive()))

    def _addrs(self) -> list[str]:
        leader = getattr(self.meta, "leader", None)
        addrs = list(self.meta.addrs)
        return ([leader] if leader else []) + [a for a in addrs if a != leader]

    async def _watch_loop(self) -> None:
        backoff = RECONNECT_MIN
        attempt = 0
        while True:
            addrs = self._addrs()
            addr = addrs[attempt % len(addrs)]
            try:
                with trio.CancelScope() as scope:
                    self._stream_scope = scope
                    reload = await self._watch_once(addr)
                    if reload:
                        await self._reload()
                self._stream_scope = None
                backoff = RECONNECT_MIN
                continue
            except trio.Cancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - any stream failure: reconnect
                self._stream_scope = None
                self.counters["watch_errors"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.debug("watch from %s failed: %s", addr, self.last_error)
                self._record(self.view.on_root_unreachable(self._alive()))
                attempt += 1
            await trio.sleep(backoff * (0.5 + self._rng.random()))
            backoff = min(backoff * 2, RECONNECT_MAX)

    async def _watch_once(self, addr: str) -> bool:
        """Consume one watch stream; True when the view needs a snapshot reload."""
        request = WatchRequest(self.view.served_token, self.keepalive_ms)
        self.counters["watch_connects"] += 1
        idle = max(1.0, 4 * self.keepalive_ms / 1000)
        async with self.meta.rpc.stream(addr, request) as items:
            self.connected_to = addr
            it = items.__aiter__()
            while True:
                # a peer that stops answering (SIGSTOP, half-open TCP) must not pin the
                # stream: no item (not even a keepalive) within `idle` -> reconnect
                with trio.move_on_after(idle) as quiet:
                    try:
                        item = await it.__anext__()
                    except StopAsyncIteration:
                        break
                if quiet.cancelled_caught:
                    self.counters["watch_idle_timeouts"] += 1
                    raise TimeoutError(f"watch stream from {addr} silent for {idle:.1f}s")
                if self._on_item(item):
                    return True
        raise ConnectionError(f"watch stream from {addr} ended")

    def _on_item(self, item: WatchItem) -> bool:
        now = self._alive()  # a stall is reported before a possibly stale item is handled
        self.counters["watch_items"] += 1
        retained = RootToken(0, max(0, item.retained_from - 1)) if item.retained_from else None
        leader = bool(getattr(item, "from_leader", False)) or self.unsafe_follower_keepalive
        self.counters["watch_items_leader" if leader else "watch_items_follower"] += 1
        if self.paused:
            # Note root's token and where its retained tail starts: a view that fell behind
            # the tail is BOOTSTRAP_REQUIRED (DESIGN 4.3), not LAGGING. No reload is started
            # while paused (resume re-subscribes and installs the checkpoint), so the step is
            # recorded as NONE rather than RELOAD.
            step = self.view.on_keepalive(item.current_token, now, retained,
                                          from_leader=leader)
            if step.catch_up_action == CatchUpAction.RELOAD:
                step = CatchUpStep(step.root_token_before, step.root_token_after,
                                   step.catch_up_state, CatchUpAction.NONE)
            self._record(step)
            return False
        if item.bootstrap_required and item.checkpoint is not None:
            return self._install_checkpoint(item, now, leader)
        if item.events:
            step = self.view.on_delta(list(item.events), item.current_token, now,
                                      from_leader=leader)
            self._record(step)
            if step.catch_up_action == CatchUpAction.ADVANCE:
                if not self._observe_fold(self.view.catalog):
                    return True
                self._installed()
            elif step.catch_up_action == CatchUpAction.RELOAD:
                gap = self.view.last_gap
                if isinstance(gap, CatalogFoldError):  # the mirror cannot follow: rebuild
                    self._diverged(gap.cause)
                return True
            return False
        step = self.view.on_keepalive(item.current_token, now, retained, from_leader=leader)
        self._record(step)
        return step.catch_up_action == CatchUpAction.RELOAD

    def _install_checkpoint(self, item: WatchItem, now: float, leader: bool = False) -> bool:
        state = RootState.from_checkpoint(item.checkpoint)
        token = item.checkpoint_token or state.token
        catalog = catalog_from_state(state)
        step = self.view.on_bootstrap_required(catalog, token, now, from_leader=leader)
        self._record(step)
        self.counters["checkpoint_installs"] += 1
        if step.catch_up_action == CatchUpAction.BOOTSTRAP:
            self._installed()
        self._record(self.view.on_keepalive(item.current_token, now, from_leader=leader))
        return False

    def _observe_fold(self, catalog: RootCatalog) -> bool:
        """Bookkeeping of the events the catalog just folded into the mirror (each seen with
        the state before it); False when it fails (the view is rebuilt by a reload)."""
        try:
            for ce, before, err in catalog.folded:
                kind = ce.event.kind
                if kind == EventKind.GRANT_ISSUED and isinstance(ce.event.payload, GrantIssued):
                    gid = ce.event.payload.grant.grant_id
                    if gid not in before.grants and gid not in before.retirements:
                        self.fence_before_grant[gid] = (before.id_fence, before.tso_fence)
                entry = _history_entry(before, ce) if (
                    kind in TERMINAL_KINDS or kind in CANCEL_KINDS
                    or kind == EventKind.REGION_TOMBSTONED) else None
                if err is None and entry is not None:
                    self.history.append(entry)
                if err is None and kind in PLANNED_KINDS:
                    self.counters["transitions_planned_seen"] += 1
        except Exception as exc:  # noqa: BLE001 - a mirror that cannot follow is rebuilt
            self._diverged(exc)
            return False
        return True

    def _diverged(self, exc: BaseException) -> None:
        self.counters["mirror_divergence"] += 1
        self.last_error = f"mirror: {type(exc).__name__}: {exc}"[:300]

    async def _reload(self) -> None:
        """Rebuild the catalog (and so the mirror) from a rooted snapshot of the metaroot
        leader."""
        self._record(self.view.begin_reload())
        self.counters["reloads"] += 1
        try:
            reply = await self.meta.call(SnapshotRequest(), timeout=5.0, leader=True)
        except BaseException:
            self._record(self.view.abort_reload())
            raise
        state = RootState.from_checkpoint(reply.checkpoint)
        step = self.view.finish_reload(catalog_from_state(state), state.token, self._alive())
        self._record(step)
        if step.catch_up_action == CatchUpAction.RELOAD:
            self._installed()
        else:
            self._record(self.view.abort_reload())

    # ---- bookkeeping -------------------------------------------------------------------

    def _installed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _record(self, step: CatchUpStep) -> None:
        self.counters[f"steps_{step.catch_up_action.name.lower()}"] += 1
        changed_state = step.catch_up_state != self._last_state
        self._last_state = step.catch_up_state
        if step.catch_up_action != CatchUpAction.NONE or changed_state:
            self.steps.append((trio.current_time(), step))
