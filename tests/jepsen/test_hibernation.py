"""Hibernating regions on real processes (docs/protocols.md "Hibernating regions").

A local cluster (1 metaroot, 1 coordinator, 3 stores, one region, 100 ms ticks, 10-tick
elections, 20-tick hibernation): an idle region stops ticking on every store; a write wakes
it; kill -9 of its leader's store while it sleeps wakes the followers (their ping of that
store fails) and they elect; and a leader paused while asleep, cut off from the others while
they elect and write, answers no stale read when resumed, because waking moves its lease
clock by the time it slept. With NOKV_UNSAFE_HIBERNATE=1 in the stores (a woken group keeps
its lease clock where it stopped) the same schedule serves the stale read (slow tier).
"""

from __future__ import annotations

import time

import pytest
import trio
from jepsen_lite.control import ClusterControl
from jepsen_lite.direct import DirectStoreClient
from jepsen_lite.nemesis import partition_rules

from nokvpy.client.errors import NokvError
from nokvpy.protocol.store_rpc import ExecutionStatusRequest

pytestmark = pytest.mark.cluster

KEY = b"hib/k"
READS = 16


async def region_states(control: ClusterControl, region_id: int) -> dict[str, dict]:
    out = {}
    for name in control.names("store"):
        try:
            reply = await control.rpc.call(control.address(name),
                                           ExecutionStatusRequest(region_id), timeout=1.0)
            out[name] = reply.body["regions"][str(region_id)]
        except Exception:  # noqa: BLE001 - down or paused: not listed
            continue
    return out


async def wait_asleep(control: ClusterControl, region_id: int, timeout: float = 20.0) -> None:
    """Until every store reports the region hibernating."""
    with trio.fail_after(timeout):
        while True:
            states = await region_states(control, region_id)
            if len(states) == 3 and all(s["hibernating"] for s in states.values()):
                return
            await trio.sleep(0.1)


async def leader_of(control: ClusterControl, region_id: int, names, timeout: float = 20.0) -> str:
    with trio.fail_after(timeout):
        while True:
            leader = await control.region_leader(region_id, names)
            if leader is not None:
                return leader
            await trio.sleep(0.05)


async def with_cluster(root, env, body):
    control = ClusterControl(root, env=env, seed=1)
    control.create()
    try:
        await control.start_all(60)
        return await body(control)
    finally:
        with trio.CancelScope(shield=True):
            await control.aclose()
        control.stop_all()


async def test_an_idle_region_sleeps_wakes_on_a_write_and_fails_over_when_its_leader_dies(tmp_path):
    async def body(control: ClusterControl) -> None:
        descriptor, _ = await control.route_of(KEY)
        rid = descriptor.region_id
        stores = control.names("store")
        old = await leader_of(control, rid, stores)
        to_old = DirectStoreClient(control.probe_rpc, control.address(old),
                                   control.node_id(old), descriptor)
        await to_old.put(KEY, b"v1", timeout=5.0)
        await wait_asleep(control, rid)
        # a write wakes it and is served by the same leader
        await to_old.put(KEY, b"v2", timeout=5.0)
        assert await to_old.get(KEY, timeout=5.0) == b"v2"
        await wait_asleep(control, rid)
        # kill -9 of the sleeping leader's store: the others wake and elect
        t0 = time.monotonic()
        await control.kill(old)
        others = [n for n in stores if n != old]
        new = await leader_of(control, rid, others, timeout=15.0)
        to_new = DirectStoreClient(control.probe_rpc, control.address(new),
                                   control.node_id(new), descriptor)
        with trio.fail_after(15.0):
            while True:
                try:
                    await to_new.put(KEY, b"v3", timeout=1.0)
                    break
                except NokvError:
                    await trio.sleep(0.05)
        failover = time.monotonic() - t0
        print(f"hibernating region: kill -9 of the leader to the first write acknowledged "
              f"by {new}: {failover:.2f}s")
        assert failover < 10.0
        assert await to_new.get(KEY, timeout=5.0) == b"v3"

    await with_cluster(tmp_path / "cluster", {}, body)


async def paused_asleep(control: ClusterControl) -> dict:
    """The leader of the sleeping region is isolated and paused; the others wake (pings fail),
    elect and write; the old leader is resumed and asked at once."""
    descriptor, _ = await control.route_of(KEY)
    rid = descriptor.region_id
    stores = control.names("store")
    old = await leader_of(control, rid, stores)
    rpc = control.probe_rpc
    to_old = DirectStoreClient(rpc, control.address(old), control.node_id(old), descriptor)
    await to_old.put(KEY, b"v0", timeout=5.0)  # also opens the connection the gets use
    await wait_asleep(control, rid)
    label = f"test:isolate:{old}"
    await control.add_fault_rules(label, partition_rules("isolate", old, control.names()))
    await control.pause(old)
    others = [n for n in stores if n != old]
    newest, results = 0, []
    try:
        new = await leader_of(control, rid, others, timeout=20.0)
        to_new = DirectStoreClient(rpc, control.address(new), control.node_id(new), descriptor)
        for i in range(1, 6):
            with trio.fail_after(10.0):
                while True:
                    try:
                        await to_new.put(KEY, b"v%d" % i, timeout=1.0)
                        break
                    except NokvError:
                        await trio.sleep(0.05)
            newest = i
    finally:
        results = [None] * READS

        async def get(i: int) -> None:
            try:
                results[i] = await to_old.get(KEY, timeout=2.0)
            except NokvError as exc:
                results[i] = exc

        async with trio.open_nursery() as nursery:
            control.sigcont(old)  # resumed: ask it at once
            for i in range(READS):
                nursery.start_soon(get, i)
        await control.resume(old)
        await control.remove_fault_rules(label)
    served = [int(r[1:]) for r in results if isinstance(r, bytes)]
    return {"old": old, "newest": newest, "served": served,
            "stale": [n for n in served if n < newest],
            "errors": sorted({type(r).__name__ for r in results if isinstance(r, Exception)})}


async def test_a_leader_paused_while_asleep_serves_no_stale_read(tmp_path):
    out = await with_cluster(tmp_path / "cluster", {}, paused_asleep)
    print(out)
    assert out["newest"] == 5 and out["stale"] == [], out


@pytest.mark.slow
@pytest.mark.parametrize("attempt", [1, 2, 3])
async def test_the_unsafe_hibernate_switch_is_caught(tmp_path, attempt):
    """NOKV_UNSAFE_HIBERNATE=1: the woken old leader trusts the lease it had when it fell
    asleep and answers the reads with v0."""
    out = await with_cluster(tmp_path / "cluster", {"NOKV_UNSAFE_HIBERNATE": "1"},
                             paused_asleep)
    print(out)
    assert out["stale"], f"attempt {attempt}: the unsafe build was not caught: {out}"
