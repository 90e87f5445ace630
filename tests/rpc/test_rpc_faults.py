"""Fault rules: partitions drop traffic both ways with one side's rules; healing restores."""

from __future__ import annotations

import pytest
import trio
from rpc_helpers import ident, serving

from nokvpy.rpc import FaultRules, RpcClient, RpcServer, RpcTimeoutError
from nokvpy.wire import FaultRule, FaultRulesState, GetFaultRules, Ping, SetFaultRules


def test_decisions_are_seeded_and_filtered():
    def run(seed: int) -> list:
        rules = FaultRules(seed)
        rules.drop(0.5, message_types=["Ping"])
        rules.delay(0.1, 0.05, dst=["store-2"])
        return [rules.decide("store-1", f"store-{1 + i % 2}", "Ping") for i in range(50)]

    assert run(7) == run(7)
    verdicts = run(7)
    assert any(v.drop for v in verdicts) and not all(v.drop for v in verdicts)
    assert all(0.1 <= v.delay <= 0.15 for v in verdicts[1::2] if not v.drop)
    rules = FaultRules(1)
    rules.drop(1.0, message_types=["Echo"])
    assert not rules.decide("a", "b", "Ping").drop and rules.decide("a", "b", "Echo").drop
    rules.isolate("store-3")
    assert rules.decide("store-3", "x", "Ping").drop and rules.decide("x", "store-3", "Ping").drop
    assert not rules.decide("store-3", "x", "SetFaultRules").drop  # admin is never faulted
    rules.heal()
    assert not rules.active


class _Node:
    """One 'process': a server and a client sharing one FaultRules."""

    def __init__(self, node_id: int) -> None:
        self.faults = FaultRules(seed=node_id)
        self.server = RpcServer(ident("store", node_id), faults=self.faults)
        self.client = RpcClient(ident("store", node_id), faults=self.faults)


async def _reachable(client: RpcClient, addr: str) -> bool:
    try:
        await client.call(addr, Ping(), timeout=0.3)
        return True
    except RpcTimeoutError:
        return False


async def test_partition_on_one_side_drops_both_directions_and_heals():
    a, b = _Node(1), _Node(2)
    async with serving(a.server) as addr_a, serving(b.server) as addr_b:
        with trio.fail_after(20):
            assert await _reachable(a.client, addr_b) and await _reachable(b.client, addr_a)
            b.faults.partition({"store-1"}, {"store-2"})  # only store-2 knows about it
            assert not await _reachable(a.client, addr_b)  # dropped by b's server (inbound)
            assert not await _reachable(b.client, addr_a)  # dropped by b's client (outbound)
            assert b.server.counters["fault_dropped"] == 1
            assert b.client.counters["fault_dropped"] == 1
            b.faults.heal()
            assert await _reachable(a.client, addr_b) and await _reachable(b.client, addr_a)
    await a.client.aclose()
    await b.client.aclose()


async def test_fault_rules_over_the_admin_rpc():
    b = _Node(2)
    async with serving(b.server) as addr_b, RpcClient(ident("store", 1)) as other:
        with trio.fail_after(20):
            rules = (FaultRule(src=frozenset({"store-1"}), drop=1.0, label="cut"),)
            state = await other.call(addr_b, SetFaultRules(seed=5, rules=rules), 5)
            assert state == FaultRulesState(5, rules, 0, 0)
            assert not await _reachable(other, addr_b)  # partitioned ...
            state = await other.call(addr_b, GetFaultRules(), 5)  # ... but admin still works
            assert state.rules == rules and state.dropped == 1
            await other.call(addr_b, SetFaultRules(seed=5, rules=()), 5)  # heal remotely
            assert await _reachable(other, addr_b)
    await b.client.aclose()


@pytest.mark.parametrize("where", ["client", "server"])
async def test_delay_rule_delays(where):
    b = _Node(2)
    async with serving(b.server) as addr_b, RpcClient(ident("store", 1)) as other:
        with trio.fail_after(20):
            (other.faults if where == "client" else b.faults).delay(0.2, message_types=["Ping"])
            start = trio.current_time()
            await other.call(addr_b, Ping(), 5)
            assert trio.current_time() - start >= 0.2
    await b.client.aclose()
