"""What the leader knows about each peer, and the quorum arithmetic over it.

Owns: `Inflights` (the window of unacknowledged MsgApps to one follower), `Progress` (one
peer's match/next indices and its PROBE / REPLICATE / SNAPSHOT flow-control state) and
`ProgressTracker` (the voter and learner sets, vote tallying, the quorum commit index and
check-quorum activity). Never sends messages and never reads the log: the core decides what to
send from the answers given here. Learners get a Progress but never count toward a quorum.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum

from .types import ConfState


class ProgressState(IntEnum):
    PROBE = 0  # one append per heartbeat interval until the follower's match is found
    REPLICATE = 1  # stream appends optimistically, bounded by the inflight window
    SNAPSHOT = 2  # a snapshot is in flight; send nothing until it is reported


class VoteResult(IntEnum):
    PENDING = 0
    LOST = 1
    WON = 2


class Inflights:
    """Last indices of the MsgApps sent but not yet acknowledged, oldest first."""

    __slots__ = ("size", "_q")

    def __init__(self, size: int) -> None:
        self.size = size
        # Invariant: indices are increasing; len(_q) <= size.
        self._q: deque[int] = deque()

    def add(self, index: int) -> None:
        if len(self._q) >= self.size:
            raise AssertionError("cannot add into a full inflights window")
        self._q.append(index)

    def free_le(self, to: int) -> None:
        q = self._q
        while q and q[0] <= to:
            q.popleft()

    def free_first_one(self) -> None:
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.size

    def count(self) -> int:
        return len(self._q)

    def reset(self) -> None:
        self._q.clear()


class Progress:
    __slots__ = (
        "match",
        "next",
        "state",
        "pending_snapshot",
        "recent_active",
        "probe_sent",
        "inflights",
        "is_learner",
        "lease_tick",
    )

    def __init__(self, match: int, next_: int, max_inflight: int, is_learner: bool = False):
        # Invariant: match < next (the leader knows entries [1, match] are on the peer and
        # will send from next).
        self.match = match
        self.next = next_
        self.state = ProgressState.PROBE
        # Index of the snapshot in flight while state == SNAPSHOT, else 0.
        self.pending_snapshot = 0
        # Heard from since the last check-quorum round (the leader's own entry is always True).
        self.recent_active = False
        # PROBE only: an append was sent and we wait for its answer (or a heartbeat answer).
        self.probe_sent = False
        self.inflights = Inflights(max_inflight)
        self.is_learner = is_learner
        # Largest leader tick echoed back in a heartbeat answer (for LEASE_BASED reads).
        self.lease_tick = -1

    def __repr__(self) -> str:
        return (
            f"Progress(match={self.match}, next={self.next}, state={self.state.name}, "
            f"learner={self.is_learner}, inflight={self.inflights.count()})"
        )

    def reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self.reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self.reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self.reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self.reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """An append up to `n` was acknowledged; False if it was stale."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def optimistic_update(self, n: int) -> None:
        self.next = n + 1

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """An append at `rejected` was refused; back off next. False if the refusal is stale.

        A refusal at or below match is always stale: the peer holds [1, match] (it may arrive
        late, e.g. after report_unreachable turned REPLICATE into PROBE with next = match+1).
        """
        if rejected <= self.match:
            return False
        if self.state == ProgressState.REPLICATE:
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        # Invariant kept: next > match, whatever the hint says.
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        state = self.state
        if state == ProgressState.REPLICATE:
            return len(self.inflights._q) >= self.inflights.size
        if state == ProgressState.PROBE:
            return self.probe_sent
        return True


class ProgressTracker:
    __slots__ = ("voters", "learners", "progress", "votes", "max_inflight")

    def __init__(self, max_inflight: int) -> None:
        # Invariant: voters and learners are disjoint; progress has exactly their union as keys.
        self.voters: set[int] = set()
        self.learners: set[int] = set()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.max_inflight = max_inflight

    def conf_state(self) -> ConfState:
        return ConfState(tuple(sorted(self.voters)), tuple(sorted(self.learners)))

    def is_singleton(self) -> bool:
        return len(self.voters) == 1

    def ids(self) -> list[int]:
        """All peers (voters and learners) in ascending order: iteration is deterministic."""
        return sorted(self.progress)

    def init_progress(self, node_id: int, match: int, next_: int, is_learner: bool) -> None:
        if is_learner:
            self.learners.add(node_id)
            self.voters.discard(node_id)
        else:
            self.voters.add(node_id)
            self.learners.discard(node_id)
        pr = self.progress.get(node_id)
        if pr is None:
            pr = Progress(match, next_, self.max_inflight, is_learner)
            # A freshly added peer counts as active so check-quorum does not step down at once.
            pr.recent_active = True
            self.progress[node_id] = pr
        else:
            pr.is_learner = is_learner

    def remove(self, node_id: int) -> None:
        self.voters.discard(node_id)
        self.learners.discard(node_id)
        self.progress.pop(node_id, None)
        self.votes.pop(node_id, None)

    # -- quorum --------------------------------------------------------------------------

    def committed(self) -> int:
        """Largest index replicated on a majority of voters (0 without voters)."""
        n = len(self.voters)
        if n == 0:
            return 0
        progress = self.progress
        if n == 3:  # the common case, without sorting
            a, b, c = (progress[v].match for v in self.voters)
            if a > b:
                a, b = b, a
            # now a <= b; the median of (a, b, c)
            if c <= a:
                return a
            if c >= b:
                return b
            return c
        srt = sorted((progress[v].match for v in self.voters), reverse=True)
        return srt[n // 2]

    def vote_result(self, votes: dict[int, bool]) -> VoteResult:
        """Outcome of an election (or of a ReadIndex heartbeat round) given `votes`."""
        n = len(self.voters)
        if n == 0:
            return VoteResult.WON
        granted = rejected = 0
        for v in self.voters:
            got = votes.get(v)
            if got is None:
                continue
            if got:
                granted += 1
            else:
                rejected += 1
        q = n // 2 + 1
        if granted >= q:
            return VoteResult.WON
        if n - rejected < q:
            return VoteResult.LOST
        return VoteResult.PENDING

    def record_vote(self, node_id: int, granted: bool) -> None:
        if node_id not in self.votes:
            self.votes[node_id] = granted

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        granted = rejected = 0
        for v in self.voters:
            got = self.votes.get(v)
            if got is None:
                continue
            if got:
                granted += 1
            else:
                rejected += 1
        return granted, rejected, self.vote_result(self.votes)

    def reset_votes(self) -> None:
        self.votes = {}

    def quorum_active(self) -> bool:
        """Check quorum: did a majority of voters talk to the leader recently?"""
        active = {v: self.progress[v].recent_active for v in self.voters}
        return self.vote_result(active) == VoteResult.WON

    def quorum_value(self, values: dict[int, int]) -> int:
        """The largest v that a majority of voters reached: values[voter] >= v (a voter
        missing from `values` counts as 0). Used for ReadIndex rounds."""
        n = len(self.voters)
        if n == 0:
            return 0
        srt = sorted((values.get(v, 0) for v in self.voters), reverse=True)
        return srt[n // 2]

    def quorum_lease_tick(self, self_id: int, now: int) -> int:
        """The tick by which a majority of voters had answered a heartbeat (`now` for self)."""
        n = len(self.voters)
        if n == 0:
            return -1
        ticks = sorted(
            (now if v == self_id else self.progress[v].lease_tick for v in self.voters),
            reverse=True,
        )
        return ticks[n // 2]
