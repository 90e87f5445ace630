"""A paused region leader must not serve stale linearizable reads (real processes).

The incident: SIGSTOP the leader store of a region for 4 s; the other two stores elect a new
leader and acknowledge many puts; SIGCONT the old leader and at once send 16 linearizable gets
straight to it (a client whose route cache still names it). The old leader judged its lease
in ticks and counted one tick for the whole pause, so it answered from its lease with the
value from before the pause. docs/protocols.md, "Leader leases", has the argument that a lease
fed the ticks that really elapsed cannot do that.

Each iteration, on a local cluster (1 metaroot, 1 coordinator, 3 stores, one region, 100 ms
ticks, 10-tick elections):
  init   find the region leader, put the key through it, open a connection to it;
  act    SIGSTOP it for 4 s; as soon as another store leads the region, put the key through
         that store as fast as it answers (every acknowledged value recorded); stop writing,
         SIGCONT the old leader and at once send 16 gets straight at it;
  check  every get returns the newest acknowledged value or a newer one that was in flight,
         or fails (NOT_LEADER, timeout): never an older value.
``isolate`` iterations also cut the old leader off from every other server (fault rules set
before the pause, removed after the gets): no message of the new term can reach it first, so
only its lease can refuse the gets.

Default run: 2 iterations (one plain, one isolated). ``-m slow``: 50 (``NOKV_PAUSE_ITERATIONS``
sets either). With ``NOKV_UNSAFE_LEASE=1`` in the stores (the old one-tick-per-wake-up rule) the
isolated pause is caught within a few iterations (default run); the plain pause is not (see
docs/testing.md: the switch keeps the fix's clock check on the lease fast path).
"""

from __future__ import annotations

import os
import time

import pytest
import trio
from jepsen_lite.control import ClusterControl
from jepsen_lite.direct import DirectStoreClient
from jepsen_lite.nemesis import partition_rules

from nokvpy.client.errors import NokvError

pytestmark = pytest.mark.cluster

KEY = b"lease/k"
PAUSE = 4.0
READS = 16


def _number(value: bytes | None) -> int:
    """b"v17" -> 17 (b"" / None -> -1)."""
    return int(value[1:]) if value and value.startswith(b"v") else -1


async def _leader(control: ClusterControl, region_id: int, names: list[str],
                  timeout: float = 20.0) -> str:
    with trio.fail_after(timeout):
        while True:
            leader = await control.region_leader(region_id, names)
            if leader is not None:
                return leader
            await trio.sleep(0.05)


async def _caught_up(control: ClusterControl, region_id: int, timeout: float = 20.0) -> None:
    """Every store applied what the region committed (the resumed one can vote again)."""
    from nokvpy.protocol.store_rpc import ExecutionStatusRequest

    with trio.fail_after(timeout):
        while True:
            applied = []
            for name in control.names("store"):
                try:
                    reply = await control.rpc.call(control.address(name),
                                                   ExecutionStatusRequest(region_id), timeout=1.0)
                    region = reply.body["regions"][str(region_id)]
                    applied.append((region["applied_index"], region["commit_index"]))
                except Exception:  # noqa: BLE001 - still catching up
                    applied.append((-1, 0))
            if len({a for a, _ in applied}) == 1 and applied[0][0] >= 0:
                return
            await trio.sleep(0.1)


async def pause_iteration(control: ClusterControl, it: int, isolate: bool) -> dict:
    """One iteration (module docstring); returns what happened, stale reads included."""
    rpc = control.probe_rpc
    descriptor, _ = await control.route_of(KEY)
    assert descriptor is not None, "no region holds the key"
    rid = descriptor.region_id
    stores = control.names("store")
    old = await _leader(control, rid, stores)
    others = [n for n in stores if n != old]
    to_old = DirectStoreClient(rpc, control.address(old), control.node_id(old), descriptor)
    await to_old.put(KEY, b"v0", timeout=5.0)  # also opens the connection the gets will use
    label = f"test:isolate:{old}"
    if isolate:
        await control.add_fault_rules(label, partition_rules("isolate", old, control.names()))
    acked: list[tuple[int, float]] = []  # (value number, acknowledged at)
    issued = 0
    t0 = time.monotonic()
    await control.pause(old)
    try:
        new = await _leader(control, rid, others, timeout=PAUSE + 10)
        elected = time.monotonic() - t0
        to_new = DirectStoreClient(rpc, control.address(new), control.node_id(new), descriptor)
        with trio.move_on_at(trio.current_time() + max(0.0, PAUSE - (time.monotonic() - t0))):
            while True:
                issued += 1
                try:
                    await to_new.put(KEY, b"v%d" % issued, timeout=1.0)
                except NokvError:
                    continue
                acked.append((issued, time.monotonic()))
    finally:
        results: list[object] = [None] * READS
        newest = acked[-1][0] if acked else 0

        async def get(i: int) -> None:
            try:
                results[i] = await to_old.get(KEY, timeout=2.0)
            except NokvError as exc:
                results[i] = exc

        async with trio.open_nursery() as nursery:
            control.sigcont(old)  # resumed: ask it at once, before anything else
            for i in range(READS):
                nursery.start_soon(get, i)
        await control.resume(old)
        if isolate:
            await control.remove_fault_rules(label)
    served = [_number(r) for r in results if not isinstance(r, Exception)]
    stale = [n for n in served if n < newest]
    errors: dict[str, int] = {}
    for r in results:
        if isinstance(r, Exception):
            name = f"{type(r).__name__}:{getattr(r, 'reason', '')}"
            errors[name] = errors.get(name, 0) + 1
    out = {"iteration": it, "isolate": isolate, "old": old, "new": new,
           "elected_after_s": round(elected, 3), "acked": len(acked), "newest": newest,
           "issued": issued, "served": served, "stale": stale, "errors": errors}
    print(out, flush=True)
    assert all(n <= issued for n in served), f"a get returned a value never written: {out}"
    await _caught_up(control, rid)
    return out


async def run_pauses(root, env: dict[str, str], iterations: int, pattern: tuple[bool, ...],
                     stop_at_stale: bool = False) -> list[dict]:
    control = ClusterControl(root, env=env, seed=1)
    control.create()
    out: list[dict] = []
    try:
        await control.start_all(60)
        for it in range(iterations):
            out.append(await pause_iteration(control, it, pattern[it % len(pattern)]))
            if stop_at_stale and out[-1]["stale"]:
                break
    finally:
        with trio.CancelScope(shield=True):
            await control.aclose()
        control.stop_all()  # every process, by the pid it was started with
    return out


def _summary(results: list[dict]) -> str:
    stale = [r for r in results if r["stale"]]
    served = sum(len(r["served"]) for r in results)
    return (f"{len(results)} iterations ({sum(r['isolate'] for r in results)} isolated), "
            f"{sum(r['acked'] for r in results)} puts acknowledged by new leaders, "
            f"{served}/{READS * len(results)} gets answered by the resumed leader, "
            f"{len(stale)} iterations with a stale answer "
            f"{[(r['iteration'], r['isolate'], r['stale'][:3], r['newest']) for r in stale]}")


def _iterations(default: int) -> int:
    return int(os.environ.get("NOKV_PAUSE_ITERATIONS", default))


async def test_a_resumed_leader_never_serves_a_stale_read(tmp_path):
    results = await run_pauses(tmp_path / "cluster", {}, _iterations(2), (False, True))
    print(_summary(results))
    assert not any(r["stale"] for r in results), _summary(results)
    assert all(r["acked"] > 0 for r in results), "the new leader acknowledged nothing"


@pytest.mark.slow
async def test_a_resumed_leader_never_serves_a_stale_read_50_times(tmp_path):
    results = await run_pauses(tmp_path / "cluster", {}, _iterations(50), (False, True))
    print(_summary(results))
    assert not any(r["stale"] for r in results), _summary(results)


@pytest.mark.slow  # a catch experiment (about 9 s): the default run keeps the safe check
async def test_the_unsafe_lease_switch_is_caught(tmp_path):
    """NOKV_UNSAFE_LEASE=1 (one tick per wake-up): an isolated paused leader still trusts
    its lease after SIGCONT and answers from it. Caught within a few iterations."""
    results = await run_pauses(tmp_path / "cluster", {"NOKV_UNSAFE_LEASE": "1"},
                               _iterations(4), (True,), stop_at_stale=True)
    print(_summary(results))
    assert any(r["stale"] for r in results), f"the unsafe build was not caught: {_summary(results)}"
