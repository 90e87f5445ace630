"""MemoryStorage (etcd semantics: a dummy entry at the compaction point), RaftLog and
progress/quorum arithmetic."""

from __future__ import annotations

import pytest

from nokvpy.raft import (
    CompactedError,
    ConfState,
    Entry,
    MemoryStorage,
    Snapshot,
    SnapshotMetadata,
    SnapshotOutOfDateError,
    UnavailableError,
)
from nokvpy.raft.log import RaftLog
from nokvpy.raft.progress import Inflights, Progress, ProgressState, ProgressTracker, VoteResult


def storage(*index_terms: tuple[int, int]) -> MemoryStorage:
    """Storage whose dummy entry is the first pair."""
    st = MemoryStorage()
    (i0, t0), rest = index_terms[0], index_terms[1:]
    if i0:
        st.apply_snapshot(Snapshot(SnapshotMetadata(i0, t0, ConfState((1,)))))
    st.append([Entry(t, i) for i, t in rest])
    return st


def test_storage_term_and_bounds():
    st = storage((3, 3), (4, 4), (5, 5))
    with pytest.raises(CompactedError):
        st.term(2)
    assert [st.term(i) for i in (3, 4, 5)] == [3, 4, 5]
    with pytest.raises(UnavailableError):
        st.term(6)
    assert (st.first_index(), st.last_index()) == (4, 5)


def test_storage_entries_and_size_limit():
    st = MemoryStorage()
    st.append([Entry(1, i, data=b"x" * 10) for i in range(1, 6)])
    with pytest.raises(CompactedError):
        st.entries(0, 2)
    assert [e.index for e in st.entries(2, 5)] == [2, 3, 4]
    assert [e.index for e in st.entries(2, 5, max_size=0)] == [2]  # at least one
    assert [e.index for e in st.entries(2, 5, max_size=20)] == [2, 3]
    with pytest.raises(ValueError):
        st.entries(2, 7)


def test_storage_append_truncates_conflicts_and_rejects_gaps():
    st = storage((3, 3), (4, 4), (5, 5))
    st.append([Entry(6, 4), Entry(6, 5)])  # overwrite
    assert [st.term(i) for i in (4, 5)] == [6, 6]
    st.append([Entry(3, 2), Entry(3, 3), Entry(5, 4)])  # the compacted part is ignored
    assert st.last_index() == 4 and st.term(4) == 5
    with pytest.raises(ValueError):
        st.append([Entry(5, 9)])


def test_storage_compact_and_snapshot():
    st = MemoryStorage()
    st.append([Entry(i, i) for i in range(1, 6)])
    snap = st.create_snapshot(4, ConfState((1, 2)), b"state")
    assert (snap.metadata.index, snap.metadata.term, snap.data) == (4, 4, b"state")
    with pytest.raises(SnapshotOutOfDateError):
        st.create_snapshot(3, ConfState(), b"")
    st.compact(4)
    assert (st.first_index(), st.last_index(), st.term(4)) == (5, 5, 4)
    with pytest.raises(CompactedError):
        st.compact(4)
    hs, cs = st.initial_state()
    assert cs == ConfState((1, 2))


def test_storage_apply_snapshot_replaces_log():
    st = MemoryStorage()
    st.append([Entry(1, 1), Entry(1, 2)])
    st.apply_snapshot(Snapshot(SnapshotMetadata(10, 3, ConfState((1,)))))
    assert (st.first_index(), st.last_index(), st.term(10)) == (11, 10, 3)
    with pytest.raises(SnapshotOutOfDateError):
        st.apply_snapshot(Snapshot(SnapshotMetadata(5, 3, ConfState((1,)))))


def test_raft_log_maybe_append_and_conflicts():
    log = RaftLog(storage((0, 0), (1, 1), (2, 2), (3, 3)))
    last, ok = log.maybe_append(3, 3, 3, [Entry(4, 4), Entry(4, 5)])
    assert ok and last == 5 and log.committed == 3
    last, ok = log.maybe_append(3, 2, 5, [Entry(4, 4)])  # prev term mismatch
    assert not ok
    # A conflicting suffix (unstable) is replaced.
    last, ok = log.maybe_append(3, 3, 3, [Entry(5, 4)])
    assert ok and log.term(4) == 5 and log.last_index() == 4  # the suffix after it is gone
    assert log.find_conflict([Entry(5, 4), Entry(6, 5)]) == 5
    assert log.find_conflict([Entry(1, 1), Entry(2, 2)]) == 0
    with pytest.raises(AssertionError):
        log.maybe_append(1, 1, 3, [Entry(9, 2)])  # would rewrite a committed entry


def test_find_conflict_by_term_skips_whole_terms():
    log = RaftLog(storage((0, 0), (1, 1), (2, 1), (3, 2), (4, 2), (5, 4), (6, 4)))
    assert log.find_conflict_by_term(6, 3) == (4, 2)
    assert log.find_conflict_by_term(6, 4) == (6, 4)
    assert log.find_conflict_by_term(6, 0) == (0, 0)
    assert log.find_conflict_by_term(9, 4)[0] == 9  # beyond our log


def test_raft_log_stable_and_next_ents():
    log = RaftLog(storage((0, 0), (1, 1)))
    log.append([Entry(1, 2), Entry(2, 3)])
    assert [e.index for e in log.unstable_entries()] == [2, 3]
    log.commit_to(3)
    assert [e.index for e in log.next_ents()] == [1, 2, 3]
    log.applied_to(3)
    assert not log.has_next_ents()
    log.stable_to(3, 1)  # stale term: nothing dropped
    assert len(log.unstable.entries) == 2
    log.stable_to(3, 2)
    assert log.unstable.entries == [] and log.unstable.offset == 4


def test_inflights_window():
    inf = Inflights(3)
    for i in (5, 10, 15):
        inf.add(i)
    assert inf.full()
    inf.free_le(10)
    assert inf.count() == 1 and not inf.full()
    inf.free_first_one()
    assert inf.count() == 0


def test_progress_state_machine():
    pr = Progress(match=2, next_=6, max_inflight=2)
    assert pr.state == ProgressState.PROBE and not pr.is_paused()
    pr.probe_sent = True
    assert pr.is_paused()
    assert pr.maybe_decr_to(5, 3)  # probe rejected at next-1: back off to hint + 1
    assert pr.next == 4 and not pr.probe_sent
    assert not pr.maybe_decr_to(2, 0)  # at or below match: stale in PROBE too
    assert not pr.maybe_decr_to(9, 3)  # stale rejection
    assert pr.maybe_update(7) and pr.match == 7 and pr.next == 8
    pr.become_replicate()
    pr.inflights.add(9)
    pr.inflights.add(10)
    assert pr.is_paused()
    assert not pr.maybe_decr_to(7, 0)  # at or below match: stale in REPLICATE
    pr.become_snapshot(20)
    assert pr.is_paused()
    pr.become_probe()
    assert pr.next == 21  # after a snapshot, continue behind it


@pytest.mark.parametrize(
    "matches, want",
    [
        ([5], 5),
        ([5, 3], 3),
        ([5, 3, 1], 3),
        ([1, 5, 3], 3),
        ([5, 5, 1, 1], 1),
        ([9, 8, 7, 6, 5], 7),
        ([2, 2, 2], 2),
    ],
)
def test_quorum_committed_index(matches, want):
    t = ProgressTracker(8)
    for i, m in enumerate(matches, start=1):
        t.init_progress(i, m, m + 1, False)
    t.init_progress(99, 100, 101, True)  # learners never count
    assert t.committed() == want


def test_vote_tally_ignores_learners():
    t = ProgressTracker(8)
    for i in (1, 2, 3):
        t.init_progress(i, 0, 1, False)
    t.init_progress(4, 0, 1, True)
    t.record_vote(1, True)
    t.record_vote(4, True)
    assert t.tally_votes() == (1, 0, VoteResult.PENDING)
    t.record_vote(2, False)
    t.record_vote(3, False)
    assert t.tally_votes()[2] == VoteResult.LOST
