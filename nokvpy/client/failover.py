"""Which peers a client avoids after they timed out or were unreachable, and whom it tries next.

Owns: the suspect list (stores by id, coordinators and metaroot peers by address) and the
choice of the next target among a region's voters. Pure: never sends, sleeps or reads a
clock; callers pass `now` (their `trio.current_time()`).

Rules:
- a peer whose call timed out or could not be reached is suspect for `base` seconds; a
  failure after that suspicion ended, before any success, doubles the period (up to `cap`),
  one while it is still suspect only extends it; a success clears it, and a peer quiet for
  `cap` seconds after its suspicion ended starts again from `base`;
- suspects are tried last: after every peer not suspect, the one whose suspicion ends first;
- a NOT_LEADER hint naming a suspect is believed, but followed only once the suspect's latest
  failure is `base` seconds old, and then its suspicion is cleared (`vouch`);
- the store believed to lead the region is the next target unless it is suspect or was
  tried in this round (a NOT_LEADER hint names a leader afresh: the caller forgets that it
  tried it); otherwise the next voter after it, in descriptor order, that is neither;
- when every voter is suspect, the one whose suspicion ends first; when every voter not
  suspect was tried, nobody: the round is over;
- a caller whose own loop stalled (it was paused or starved) forgives every peer
  (`forgive_all`): calls in flight across the stall failed because of the caller, so their
  failures reported within a grace period (one attempt timeout) mark nobody.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

SUSPECT_BASE = 2.0  # seconds a first failure keeps a peer out of the way
SUSPECT_CAP = 16.0


@dataclass(slots=True)
class _Suspicion:
    strikes: int  # failures, counting only those after the previous suspicion had ended
    until: float
    last: float  # time of the latest failure


class Suspects(Generic[K]):
    """Peers that recently timed out or were unreachable (see the module docstring)."""

    def __init__(self, base: float = SUSPECT_BASE, cap: float = SUSPECT_CAP):
        if base <= 0 or cap < base:
            raise ValueError(f"need 0 < base <= cap, got base={base} cap={cap}")
        self.base = base
        self.cap = cap
        self._entries: dict[K, _Suspicion] = {}
        self._ignore_until = float("-inf")  # see forgive_all
        self.ignored = 0  # failures not counted because of forgive_all

    def mark(self, peer: K, now: float) -> float:
        """`peer` timed out or could not be reached at `now`: returns how long it stays
        suspect. Failures while it is still suspect (concurrent calls, fail-fast reconnects)
        extend the suspicion without lengthening it. A failure reported while a
        `forgive_all` grace runs marks nothing (returns 0)."""
        if now <= self._ignore_until:
            self.ignored += 1
            return 0.0
        entry = self._entries.get(peer)
        if entry is None or now > entry.until + self.cap:
            entry = self._entries[peer] = _Suspicion(0, now, now)
        if entry.until <= now:
            entry.strikes += 1
        period = min(self.cap, self.base * 2 ** (entry.strikes - 1))
        entry.until = max(entry.until, now + period)
        entry.last = now
        return entry.until - now

    def failed_within(self, peer: K, window: float, now: float) -> bool:
        """Whether `peer` failed less than `window` seconds before `now`."""
        entry = self._entries.get(peer)
        return entry is not None and now - entry.last < window

    def vouch(self, peer: K, now: float) -> bool:
        """Another peer names `peer` (a NOT_LEADER hint): whether to go to it now. A suspect
        whose latest failure is under `base` seconds old is not gone to: the other voters may
        not have noticed yet that it hangs. An older one is forgiven (cleared): they had an
        election timeout to notice, and still name it."""
        if not self.is_suspect(peer, now):
            return True
        if self.failed_within(peer, self.base, now):
            return False
        self.clear(peer)
        return True

    def forgive_all(self, now: float, grace: float) -> None:
        """The caller's own loop stalled: clear every suspicion, and ignore the failures
        reported until `now + grace` (attempts in flight across the stall end within one
        attempt timeout, and their failures measure the stall, not the peer). Forgiving can
        only send a call to a hung peer again: it costs time, never safety."""
        self._entries.clear()
        self._ignore_until = max(self._ignore_until, now + grace)

    def clear(self, peer: K) -> None:
        """`peer` answered: it is no longer suspect and its next failure starts from `base`."""
        self._entries.pop(peer, None)

    def is_suspect(self, peer: K, now: float) -> bool:
        entry = self._entries.get(peer)
        return entry is not None and entry.until > now

    def until(self, peer: K) -> float | None:
        """When the suspicion of `peer` ends (it may already have ended), None if never marked."""
        entry = self._entries.get(peer)
        return entry.until if entry is not None else None

    def order(self, peers: Iterable[K], now: float) -> list[K]:
        """`peers` with those not suspect first (in the given order), then the suspects by
        the end of their suspicion, earliest first."""
        peers = list(peers)
        healthy = [p for p in peers if not self.is_suspect(p, now)]
        suspects = sorted((p for p in peers if self.is_suspect(p, now)),
                          key=lambda p: self._entries[p].until)
        return healthy + suspects

    def current(self, now: float) -> dict[K, float]:
        """Suspect peers and the seconds each stays suspect (for diagnostics)."""
        return {p: round(e.until - now, 3) for p, e in self._entries.items() if e.until > now}


def pick_store(voters: Sequence[int], believed_leader: int, suspects: Suspects[int],
               now: float, tried: Collection[int] = ()) -> int | None:
    """The store to send a region's next attempt to, or None when every voter that is not
    suspect was tried in this round (the caller then refreshes the route, backs off and
    starts a new round). When every voter is suspect, the one whose suspicion ends first."""
    if not voters:
        return believed_leader or None
    if (believed_leader in voters and believed_leader not in tried
            and not suspects.is_suspect(believed_leader, now)):
        return believed_leader
    start = voters.index(believed_leader) + 1 if believed_leader in voters else 0
    rotated = [voters[(start + i) % len(voters)] for i in range(len(voters))]
    for sid in rotated:
        if sid not in tried and not suspects.is_suspect(sid, now):
            return sid
    if all(suspects.is_suspect(sid, now) for sid in voters):
        return suspects.order(rotated, now)[0]
    return None


def next_voter(voters: Sequence[int], current: int, suspects: Suspects[int], now: float) -> int:
    """The voter after `current` (in descriptor order) that is not suspect: whom to believe
    leads the region once `current` refused without a hint, timed out or was unreachable.
    The plain next voter when all others are suspect."""
    if not voters:
        return current
    start = voters.index(current) + 1 if current in voters else 0
    rotated = [voters[(start + i) % len(voters)] for i in range(len(voters))]
    for sid in rotated:
        if sid != current and not suspects.is_suspect(sid, now):
            return sid
    return rotated[0]
