"""Leases that a pause cannot fool: the driver feeds the ticks that really elapsed.

Three in-process drivers on real LMDB (tests/replication/test_driver_hold.py's cluster). A
process pause is modelled by blocking the whole trio loop with `time.sleep` (no task runs,
the monotonic clock goes on, exactly what SIGSTOP or a CPU-starved process looks like from
inside). Checks:
  - right after the pause, before any task ran, the lease fast path refuses to answer;
  - the first turn after the pause feeds every elapsed tick (capped at MAX_FEED), so the
    leader's lease has run out and a read needs a heartbeat round;
  - with the old rule (`NOKV_UNSAFE_LEASE`, one tick per wake-up) both checks fail: the
    switch restores the bug the tests are for.
Plus the pure conversion (`ElapsedTicks`) as a property.
"""

from __future__ import annotations

import time

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from test_driver_hold import start_cluster

from nokvpy.raft.ticks import MAX_FEED, ElapsedTicks
from nokvpy.replication.driver import unsafe_lease_from_env

TICK = 0.02  # start_cluster's tick interval; election_tick=10: the lease is under 0.2 s


async def _leased_leader(nursery, tmp_path):
    leader, nodes = await start_cluster(nursery, tmp_path, flush_delay=0.01)
    with trio.fail_after(5):
        while leader.driver.lease_read_index(leader.group) is None:
            await trio.sleep(TICK / 2)
    return leader, nodes


def _pause(seconds: float) -> None:
    time.sleep(seconds)  # blocks every task of this trio run: the process is "stopped"


@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe_switch"])
async def test_a_paused_leader_does_not_answer_from_its_lease(nursery, tmp_path, unsafe):
    leader, _ = await _leased_leader(nursery, tmp_path)
    leader.driver._clock.unsafe = unsafe
    raft = leader.group.node.raft
    ticks_before = raft.ticks
    _pause(20 * TICK)  # twice the election timeout
    # No task ran since the pause: the ticker has not woken, no tick was fed.
    answered = leader.driver.lease_read_index(leader.group)
    leader.driver._feed()  # what the first turn after the pause does first
    if unsafe:
        assert raft.ticks - ticks_before <= 1
        assert raft.lease_valid(), "the old rule kept the lease across the pause"
        return
    assert answered is None, "the fast path answered from a lease the pause ended"
    assert raft.ticks - ticks_before >= 20
    assert not raft.lease_valid()


async def test_reads_after_a_pause_are_never_stale_and_the_lease_returns(nursery, tmp_path):
    """After every process was stopped for two election timeouts (the leader may lose its
    leadership: every clock moved on), a read answers an index at or above every write
    acknowledged before it, or fails; then a leader holds a lease again."""
    from nokvpy.replication.driver import ProposalError

    leader, nodes = await _leased_leader(nursery, tmp_path)
    index, _ = await leader.driver.propose_at(leader.group, b"v1")
    _pause(20 * TICK)
    assert leader.driver.lease_read_index(leader.group) is None
    with trio.fail_after(10):
        while True:
            current = [n for n in nodes.values() if n.group.is_leader]
            if current:
                try:
                    read = await current[0].driver.read_index(current[0].group)
                except ProposalError:
                    read = None
                if read is not None:
                    assert read >= index
                    break
            await trio.sleep(TICK)
        assert leader.driver.counters["ticks_late"] >= 10
        while not any(n.driver.lease_read_index(n.group) is not None for n in nodes.values()):
            await trio.sleep(TICK / 2)


def test_elapsed_ticks_examples():
    c = ElapsedTicks(0.1, 100.0)
    assert c.take(100.05) == 0
    assert c.take(100.1) == 1
    assert c.due(100.55) == 4 and c.take(100.55) == 4 and c.due(100.55) == 0
    assert c.take(104.55) == 40  # a 4 s pause: every tick, not one
    u = ElapsedTicks(0.1, 100.0, unsafe=True)
    assert u.take(104.0) == 1  # the old rule
    with pytest.raises(ValueError):
        ElapsedTicks(0, 0.0)
    assert MAX_FEED >= 20
    assert unsafe_lease_from_env({"NOKV_UNSAFE_LEASE": "1"})
    assert not unsafe_lease_from_env({"NOKV_UNSAFE_LEASE": "0"})
    assert not unsafe_lease_from_env({})


@settings(max_examples=200, deadline=None)
@given(
    interval=st.sampled_from([0.01, 0.05, 0.1, 0.25]),
    steps=st.lists(st.tuples(st.floats(0, 3.0), st.sampled_from([None, 0.5, 1.0, 2.0])),
                   max_size=40),
)
def test_elapsed_ticks_hands_out_real_time(interval, steps):
    """Whatever the wake-ups, the ticks handed out never run ahead of real time at the
    current rate and are never more than one tick behind it after a take."""
    now = 50.0
    c = ElapsedTicks(interval, now)
    owed = 0.0  # real ticks at the rates in force (the reference clock)
    fed = 0
    for dt, stretch in steps:
        if stretch is not None:
            c.set_stretch(now, stretch)
        owed += dt / (interval * c.stretch)
        now += dt
        fed += c.take(now)
        assert c.due(now) == 0
        assert owed - 1 - 1e-6 <= fed <= owed + 1e-6, (fed, owed)
