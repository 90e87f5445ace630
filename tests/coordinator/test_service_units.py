"""Coordinator service parts in isolation: duty admission gates (DESIGN 6: skew margin,
silence, draining), confirmation batching (DESIGN 4.4: a request joins only a round that
starts after it arrived), and the store tracker's liveness by TTL."""

from __future__ import annotations

import pytest
import trio

from coordinator.confirm import ConfirmBatcher
from coordinator.grantloop import DRAINING, SERVING, GateRejected, GrantLoop
from coordinator.stores import StoreTracker
from metaroot.state import RootState
from nokvpy.protocol.coordinator_rpc import StoreHeartbeatRequest
from nokvpy.protocol.enums import Duty, StoreState
from nokvpy.protocol.grants import AuthorityGrant, DutyGrant
from nokvpy.protocol.metaroot_rpc import ConfirmTokenReply
from nokvpy.protocol.records import RootToken


class _Sub:
    def __init__(self) -> None:
        self.state = RootState()


def _loop(now: list[int]) -> GrantLoop:
    loop = GrantLoop(None, _Sub(), "coordinator-1", ttl=3.0, clock=lambda: now[0])
    st = loop.states[Duty.ALLOC_ID]
    st.grant = AuthorityGrant("g1", "coordinator-1", 4, 0, 10_000, (DutyGrant(Duty.ALLOC_ID, 50),))
    st.serving = SERVING
    return loop


def test_admission_refuses_inside_the_clock_skew_margin():
    now = [1_000]
    loop = _loop(now)
    assert loop.admit(Duty.ALLOC_ID).era == 4
    now[0] = 10_000 - loop.skew_ms + 1  # still live, but within the margin
    with pytest.raises(GateRejected) as err:
        loop.admit(Duty.ALLOC_ID)
    assert err.value.reason == "grant_expiring" and err.value.violation == "primacy"
    assert loop.counters["gate_rejections"] == 1
    assert not loop.holds(Duty.ALLOC_ID) and loop.counters["gate_rejections"] == 1


def test_admission_refuses_draining_and_unheld_duties():
    now = [1_000]
    loop = _loop(now)
    loop.states[Duty.ALLOC_ID].serving = DRAINING
    with pytest.raises(GateRejected) as err:
        loop.admit(Duty.ALLOC_ID)
    assert (err.value.reason, err.value.violation) == ("grant_draining", "silence")
    with pytest.raises(GateRejected) as err:
        loop.admit(Duty.TSO)
    assert err.value.reason == "grant_not_held"
    remote = err.value.remote()
    assert remote.kind == "not_leader" and remote.details["duty"] == "tso"


async def test_confirmations_are_batched_and_never_join_a_round_in_flight(autojump_clock):
    calls: list[int] = []
    token = [0]

    class Meta:
        async def call(self, request, timeout, leader):
            calls.append(1)
            token[0] += 1
            seen = token[0]
            await trio.sleep(1.0)
            return ConfirmTokenReply(RootToken(1, seen))

    batcher = ConfirmBatcher(Meta())
    got: list[tuple[int, int]] = []

    async def read(i: int) -> None:
        t = await batcher.confirm()
        got.append((i, t.index))

    async with trio.open_nursery() as n:
        await n.start(batcher.run)
        for i in range(10):
            n.start_soon(read, i)
        await trio.sleep(0.5)  # round 1 is in flight: these must wait for round 2
        for i in range(10, 25):
            n.start_soon(read, i)
        await trio.sleep(5)
        n.cancel_scope.cancel()
    assert len(calls) == 2 and batcher.rounds == 2
    assert sorted(t for i, t in got if i < 10) == [1] * 10
    assert sorted(t for i, t in got if i >= 10) == [2] * 15
    assert batcher.max_batch == 15 and batcher.batch_sizes == {10: 1, 15: 1}


def test_store_liveness_follows_the_heartbeat_ttl():
    from coordinator.catalog import Catalog

    tracker = StoreTracker(ttl=5.0)
    assert tracker.state_of(1, 0.0) == StoreState.UNKNOWN
    tracker.on_heartbeat(StoreHeartbeatRequest(1, "h:1", []), Catalog.empty(), True, True, 10.0)
    assert tracker.state_of(1, 14.9) == StoreState.UP
    assert tracker.state_of(1, 15.1) == StoreState.DOWN
    assert tracker.state_of(1, 15.1, retired=True) == StoreState.RETIRED
    assert tracker.counters["heartbeats"] == 1
