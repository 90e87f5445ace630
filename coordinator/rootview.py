"""The coordinator's rooted view: the catch-up state machine (DESIGN 4.3, 4.5), pure.

Owns: which immutable Catalog this coordinator serves, the served and latest known root
tokens, when metaroot was last heard from, and the derivation of CatchUpState and
DegradedMode from those facts. Every input returns a CatchUpStep. The catalog is anything
with the Catalog query surface and `advance`: the subscription serves a
`coordinator.rootcatalog.RootCatalog` (an index over its RootState mirror, `empty=` its empty
snapshot); a standalone view defaults to `coordinator.catalog.Catalog`.

Never: does I/O or reads a clock (callers pass `now`, seconds as float, from one monotonic
clock), moves the served token backward, or mutates a Catalog (it swaps snapshots).

Catch-up state (derived, first match wins):
  UNAVAILABLE         no catalog at all (nothing valid to serve)
  RECOVERING          a reload is in progress (begin_reload); the previous catalog still
                      serves BEST_EFFORT
  BOOTSTRAP_REQUIRED  a delta did not continue the served token, or metaroot's retained tail
                      starts after it: only a checkpoint (or a reload) can repair the view
  LAGGING             lag > 0, or lag 0 but root freshness is not confirmed (no metaroot
                      *leader* confirmation within `staleness_window`, the last call to it
                      failed, or the process stalled and has not re-confirmed since)
  FRESH               lag 0, a leader confirmation within the window, last call succeeded

Actions reported in CatchUpStep.catch_up_action:
  NONE       the input changed no catalog (keepalive, tick, unreachability)
  ADVANCE    tail events were applied to the catalog (cost proportional to the delta)
  RELOAD     a rebuild is needed (gap / tail truncation), started (begin_reload) or
             installed (finish_reload)
  BOOTSTRAP  a checkpoint catalog was installed
  REJECT     the input was refused and nothing changed: it would move the served token
             backward, or it is a delta while a reload is in progress (the service
             resubscribes from the reloaded token)
On REJECT only the latest time seen is recorded (time is monotone); catalog, tokens, flags
and last-heard are untouched.

Heard versus confirmed (DESIGN 4.4; issue 22): any metaroot peer can be *heard* (a watch
item from a follower proves the peer is alive and gives a token the lag can be measured
against), but only a metaroot *leader* holding its quorum lease can *confirm* root's truth:
  - confirmations: `on_confirmed` (a ConfirmToken round, answered by the leader after a
    ReadIndex), or a watch input handed in with `from_leader=True` (the serving peer marked
    it: it was the leader and its quorum lease was valid when it sent it);
  - a watch input from a follower, or from a leader without its lease (`from_leader=False`,
    the default, and what a peer that does not know the field sends), updates last heard and
    the current token only. It never sets the "reachable" flag, never clears a failed call,
    and never makes the view FRESH: a view whose last leader confirmation is older than the
    window is LAGGING (served at most BOUNDED_STALE, with the lag the tokens it has seen can
    prove), even while follower keepalives keep arriving.
"Reachable" (ReadState.root_reachable) means: a leader confirmed within the window and no
call to metaroot failed since.

When metaroot was heard from ("last heard", which the staleness window is measured from):
  - a watch input (delta, keepalive, checkpoint) or a reload counts at the time it is handed
    in, which is only as good as the caller's loop is live: an item that waited in a socket
    while the process was stopped is as old as the stop;
  - a leader confirmation (`on_confirmed`) counts at the time the confirmation round was
    *asked for* (the leader's token covers everything committed before that instant), never
    at the time its answer was handled;
  - `on_stall(since, now)`: the caller's loop did not run between `since` and `now` (SIGSTOP,
    CPU starvation, a long synchronous step). Last heard is pulled back to `since`, the view
    is unconfirmed (not FRESH), and from then on watch inputs no longer count as hearing
    from metaroot until a confirmation asked for at or after `now` succeeds: whatever was
    queued during the stall is handled as data (tokens, catalog), never as freshness.

DegradedMode (first match wins; DESIGN 4.5):
  1. no catalog:      ROOT_UNAVAILABLE if metaroot not heard within the window, else
                      COORDINATOR_DEGRADED (alive, waiting for a catalog)
  2. VIEW_ONLY        catalog exists but metaroot not heard within the window, or
                      BOOTSTRAP_REQUIRED: only a stale view can be exposed
  3. COORDINATOR_DEGRADED  RECOVERING, or the caller passed degraded flags (a duty nobody
                      holds, scheduler paused, ...; a standby of a duty another
                      coordinator holds is not degraded)
  4. ROOT_LAGGING     lag > 0
  5. HEALTHY
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from coordinator.catalog import Catalog, CatalogGapError
from nokvpy.protocol.enums import CatchUpAction, CatchUpState, DegradedMode
from nokvpy.protocol.records import ZERO_TOKEN, CatchUpStep, CommittedEvent, RootToken

__all__ = ["DEFAULT_STALENESS_WINDOW", "ReadState", "RootView"]

DEFAULT_STALENESS_WINDOW = 3.0  # seconds without hearing from metaroot => root unavailable

DEGRADED_RECOVERING = "catalog_recovering"


@dataclass(slots=True, frozen=True)
class ReadState:
    """Everything the serving rules need to know about the view, at one instant."""

    served_token: RootToken
    current_token: RootToken
    root_lag: int
    catch_up_state: CatchUpState
    degraded_mode: DegradedMode
    root_reachable: bool  # a leader confirmed within the window, no call failed since
    heard_within_window: bool  # metaroot heard from within the staleness window
    has_catalog: bool = True
    degraded_reasons: frozenset[str] = frozenset()

    @property
    def root_available(self) -> bool:
        """Not 'unreachable past the staleness window'."""
        return self.heard_within_window


class RootView:
    """Catch-up state machine over immutable catalogs. Not thread-safe: one owner task
    feeds it; readers take `snapshot(now)` (a catalog plus the ReadState describing it)."""

    def __init__(self, staleness_window: float = DEFAULT_STALENESS_WINDOW,
                 catalog: Catalog | None = None, now: float | None = None, *,
                 empty: Callable[[], Catalog] = Catalog.empty) -> None:
        if staleness_window <= 0:
            raise ValueError("staleness_window must be positive")
        self.staleness_window = staleness_window
        self._catalog = catalog
        self._empty = empty  # the catalog a delta from index 1 advances when there is none
        # Why the last delta could not be applied to the catalog (a gap, or a fold error).
        self._last_gap: CatalogGapError | None = None
        # Invariant: served token == catalog.token when a catalog exists; never decreases.
        self._served = catalog.token if catalog is not None else ZERO_TOKEN
        # Invariant: current >= served; never decreases.
        self._current = self._served
        self._last_heard: float | None = now
        # Last confirmation by a metaroot leader holding its quorum (FRESH needs it within the
        # window). A view built with `now` is taken as confirmed at `now` by its caller.
        self._last_confirmed: float | None = now
        self._now: float = now if now is not None else 0.0
        self._reachable = now is not None
        # Set by on_stall: watch inputs do not count as hearing from metaroot until a
        # confirmation asked for at or after this time succeeds.
        self._stalled_at: float | None = None
        self._retained_tail_start = ZERO_TOKEN
        self._bootstrap_needed = False
        self._recovering = False

    # ---- observation ----

    @property
    def catalog(self) -> Catalog | None:
        return self._catalog

    @property
    def served_token(self) -> RootToken:
        return self._served

    @property
    def last_gap(self) -> CatalogGapError | None:
        """Why the last delta that reached the catalog could not be applied (None: it was)."""
        return self._last_gap

    @property
    def current_token(self) -> RootToken:
        return self._current

    @property
    def last_heard(self) -> float | None:
        return self._last_heard

    @property
    def stalled_at(self) -> float | None:
        """When a stall was noticed that no confirmation has covered yet (None: none)."""
        return self._stalled_at

    @property
    def retained_tail_start(self) -> RootToken:
        return self._retained_tail_start

    @property
    def bootstrap_needed(self) -> bool:
        """The next useful input is a checkpoint (also true with no catalog at all)."""
        return self._bootstrap_needed or self._catalog is None

    @property
    def last_confirmed(self) -> float | None:
        """When a metaroot leader with its quorum last confirmed root's truth (None: never)."""
        return self._last_confirmed

    def heard_within_window(self, now: float) -> bool:
        return self._last_heard is not None and now - self._last_heard <= self.staleness_window

    def confirmed_within_window(self, now: float) -> bool:
        return (self._last_confirmed is not None
                and now - self._last_confirmed <= self.staleness_window)

    def state(self, now: float | None = None) -> CatchUpState:
        now = self._now if now is None else now
        if self._catalog is None:
            return CatchUpState.UNAVAILABLE
        if self._recovering:
            return CatchUpState.RECOVERING
        if self._bootstrap_needed:
            return CatchUpState.BOOTSTRAP_REQUIRED
        if self._current.index > self._served.index:
            return CatchUpState.LAGGING
        if not (self._reachable and self.confirmed_within_window(now)) or (
                self._stalled_at is not None):
            return CatchUpState.LAGGING
        return CatchUpState.FRESH

    def read_state(self, now: float, degraded_flags: Iterable[str] = ()) -> ReadState:
        state = self.state(now)
        heard = self.heard_within_window(now)
        lag = self._current.index - self._served.index
        reasons = frozenset(degraded_flags)
        if state == CatchUpState.RECOVERING:
            reasons |= {DEGRADED_RECOVERING}
        if self._catalog is None:
            mode = DegradedMode.ROOT_UNAVAILABLE if not heard else (
                DegradedMode.COORDINATOR_DEGRADED)
        elif not heard or state == CatchUpState.BOOTSTRAP_REQUIRED:
            mode = DegradedMode.VIEW_ONLY
        elif reasons:
            mode = DegradedMode.COORDINATOR_DEGRADED
        elif lag > 0:
            mode = DegradedMode.ROOT_LAGGING
        else:
            mode = DegradedMode.HEALTHY
        reachable = self._reachable and self.confirmed_within_window(now)
        return ReadState(self._served, self._current, lag, state, mode, reachable, heard,
                         self._catalog is not None, reasons)

    def snapshot(self, now: float,
                 degraded_flags: Iterable[str] = ()) -> tuple[Catalog | None, ReadState]:
        """The catalog and the ReadState that describes it, taken together."""
        return self._catalog, self.read_state(now, degraded_flags)

    # ---- inputs ----

    def on_delta(self, events: list[CommittedEvent], current_token: RootToken,
                 now: float, *, from_leader: bool = False) -> CatchUpStep:
        """A watch delta: committed events after some token, plus root's current token
        (`from_leader`: sent by a leader holding its quorum lease; see the module doc)."""
        before = self._served
        self._observe_time(now)
        newest = max([current_token, *(ce.token for ce in events)], key=lambda t: t.index)
        fresh = [ce for ce in events if ce.token.index > before.index]
        if not fresh or self._recovering:
            # wholly old (duplicate or replayed) delta, or a reload owns the next catalog
            return self._step(before, CatchUpAction.REJECT)
        self._heard_watch(now, from_leader)
        self._note_current(newest)
        self._last_gap = None
        base = self._catalog if self._catalog is not None else (
            self._empty() if before.index == 0 else None)
        if base is None:
            return self._step(before, CatchUpAction.RELOAD)
        try:
            catalog = base.advance(fresh)
        except CatalogGapError as gap:
            self._last_gap = gap
            self._bootstrap_needed = True
            return self._step(before, CatchUpAction.RELOAD)
        self._install(catalog)
        self._bootstrap_needed = False
        return self._step(before, CatchUpAction.ADVANCE)

    def on_keepalive(self, current_token: RootToken, now: float,
                     retained_tail_start: RootToken | None = None, *,
                     from_leader: bool = False) -> CatchUpStep:
        """Root reports its current token (and, optionally, where its retained tail starts:
        the token just before the oldest retained event). Only a keepalive `from_leader` (a
        leader holding its quorum lease) confirms; any other is heard, never confirming."""
        before = self._served
        self._observe_time(now)
        if current_token.index < before.index:
            # older than what we already serve: a deposed or lagging root peer; ignore it
            return self._step(before, CatchUpAction.REJECT)
        self._heard_watch(now, from_leader)
        self._note_current(current_token)
        if retained_tail_start is not None:
            if retained_tail_start.index > self._retained_tail_start.index:
                self._retained_tail_start = retained_tail_start
            if before.index < retained_tail_start.index and self._catalog is not None:
                self._bootstrap_needed = True
                return self._step(before, CatchUpAction.RELOAD)
        return self._step(before, CatchUpAction.NONE)

    def on_bootstrap_required(self, checkpoint_catalog: Catalog, checkpoint_token: RootToken,
                              now: float, *, from_leader: bool = False) -> CatchUpStep:
        """Install a checkpoint (the answer to a watch from behind the retained tail)."""
        before = self._served
        self._observe_time(now)
        if checkpoint_catalog.token != checkpoint_token:
            raise ValueError("checkpoint catalog does not reflect the checkpoint token")
        if self._catalog is not None and checkpoint_token.index < before.index:
            return self._step(before, CatchUpAction.REJECT)
        self._heard_watch(now, from_leader)
        self._note_current(checkpoint_token)
        self._install(checkpoint_catalog)
        self._bootstrap_needed = False
        self._recovering = False
        return self._step(before, CatchUpAction.BOOTSTRAP)

    def begin_reload(self) -> CatchUpStep:
        """Start rebuilding the catalog; the current one keeps serving BEST_EFFORT."""
        if self._catalog is not None:
            self._recovering = True
        return self._step(self._served, CatchUpAction.RELOAD)

    def finish_reload(self, catalog: Catalog, token: RootToken,
                      now: float | None = None) -> CatchUpStep:
        """Install a rebuilt catalog (at `token`, from a rooted snapshot read at `now`)."""
        before = self._served
        if now is not None:
            self._observe_time(now)
        if catalog.token != token:
            raise ValueError("reloaded catalog does not reflect its token")
        if self._catalog is not None and token.index < before.index:
            return self._step(before, CatchUpAction.REJECT)
        if now is not None:
            self._heard(now)
        self._note_current(token)
        self._install(catalog)
        self._bootstrap_needed = False
        self._recovering = False
        return self._step(before, CatchUpAction.RELOAD)

    def abort_reload(self) -> CatchUpStep:
        """Give up a reload; the previous catalog is served as before."""
        self._recovering = False
        return self._step(self._served, CatchUpAction.NONE)

    def on_confirmed(self, token: RootToken, asked_at: float, now: float) -> CatchUpStep:
        """The metaroot leader confirmed `token` as its committed token, in a round asked for
        at `asked_at` (<= now): root's truth at `asked_at` is at most `token`."""
        before = self._served
        self._observe_time(now)
        if token.index < before.index:
            # a leader never confirms less than what was committed before: a deposed peer
            return self._step(before, CatchUpAction.REJECT)
        if self._stalled_at is not None and asked_at >= self._stalled_at:
            self._stalled_at = None
        self._heard(min(asked_at, now), confirmed=True)
        self._note_current(token)
        return self._step(before, CatchUpAction.NONE)

    def on_stall(self, since: float, now: float) -> CatchUpStep:
        """The caller's loop did not run from `since` to `now`: anything handed in from now
        on may have waited that long, so last heard goes back to `since` at most and only a
        confirmation asked for at or after `now` makes the view confirmed again."""
        self._observe_time(now)
        if self._last_heard is not None and self._last_heard > since:
            self._last_heard = since
        if self._last_confirmed is not None and self._last_confirmed > since:
            self._last_confirmed = since
        self._reachable = False
        self._stalled_at = now if self._stalled_at is None else max(self._stalled_at, now)
        return self._step(self._served, CatchUpAction.NONE)

    def on_root_unreachable(self, now: float) -> CatchUpStep:
        """A call to metaroot failed. Root becomes *unavailable* only once nothing was heard
        for `staleness_window`; until then it is merely unconfirmed (not FRESH)."""
        self._observe_time(now)
        self._reachable = False
        return self._step(self._served, CatchUpAction.NONE)

    def tick(self, now: float) -> CatchUpStep:
        """Time passes; state is re-derived at `now` (the window may have expired)."""
        self._observe_time(now)
        return self._step(self._served, CatchUpAction.NONE)

    # ---- internals ----

    def _observe_time(self, now: float) -> None:
        self._now = max(self._now, now)

    def _heard_watch(self, now: float, from_leader: bool) -> None:
        """A watch input: during an unconfirmed stall it is data only, even from a leader
        (only a confirmation asked for after the stall ends it; see on_stall)."""
        self._heard(now, confirmed=from_leader and self._stalled_at is None)

    def _heard(self, now: float, confirmed: bool = False) -> None:
        """Metaroot was heard at `now`; `confirmed`: by a leader holding its quorum."""
        if self._stalled_at is not None and not confirmed:
            return  # queued during a stall: data, not freshness (see on_stall)
        if self._last_heard is None or now > self._last_heard:
            self._last_heard = now
        if not confirmed:
            return  # a follower (or a leader without its lease): heard, never confirming
        self._reachable = True
        if self._last_confirmed is None or now > self._last_confirmed:
            self._last_confirmed = now

    def _note_current(self, token: RootToken) -> None:
        if token.index > self._current.index:
            self._current = token

    def _install(self, catalog: Catalog) -> None:
        assert catalog.token.index >= self._served.index or self._catalog is None
        self._catalog = catalog
        self._served = catalog.token
        self._note_current(catalog.token)

    def _step(self, before: RootToken, action: CatchUpAction) -> CatchUpStep:
        return CatchUpStep(before, self._served, self.state(), action)
