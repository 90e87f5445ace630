"""Recovery that cannot destroy data (issue 22, items 1 and 2): fence, then compensate; root
guards its own truth. Real processes (metaroot, coordinator, three stores on loopback ports),
every one killed by pid in `finally`, files only under tmp_path.

1. A compensation racing a held executor: the region leader's executor is held before its
   proposal (`store.before_propose` = `1*sleep(6000)`), a `compensate` of its split arrives
   meanwhile and is answered "compensated"; when the executor wakes, its proposal is refused
   (the compensation fenced the plan), nothing splits, no key becomes unreadable, the
   TransitionID has one outcome (CANCELLED) and root holds a "fenced" then a "compensated"
   recovery record naming what was undone. With NOKV_UNSAFE_COMPENSATION=1 (the old fence
   that records nothing) the same sequence splits after the cancel: caught.
2. A raw `Append([SPLIT_CANCELLED])` straight to metaroot while the split's terminal publish
   is held (`store.publish_terminal` = `raise`): refused by root itself (`cancel_not_fenced`),
   no region is removed, the split completes once the publish is released, one outcome. With
   root's guard off (NOKV_UNSAFE_ROOT_CANCEL=1 through a sitecustomize shim: metaroot.state
   is pure and reads no environment) the cancel is accepted: caught.
"""

from __future__ import annotations

import os

import pytest
import trio
from recovery_helpers import heartbeat_rounds, outcomes, put_keys, store_counter, unreadable
from topo_harness import REPO, Topo, wait_until

from metaroot.state import UNSAFE_CANCEL_ENV
from nokvpy.protocol import EventKind, Freshness, RangeSplit, RootEvent
from nokvpy.protocol.metaroot_rpc import AppendRequest
from nokvpy.protocol.store_rpc import AdminRequest
from nokvpy.rpc import RemoteError, RpcError
from raftstore.topology.compensation import UNSAFE_ENV

pytestmark = pytest.mark.cluster

HOLD_MS = 6000

_SHIM = f'''import os
if os.environ.get({UNSAFE_CANCEL_ENV!r}) == "1":
    import metaroot.state
    metaroot.state.set_cancel_guard(False)
'''


@pytest.fixture
def clusters(tmp_path):
    """`await clusters(store_env=..., root_env=...)` starts a 3-store cluster whose stores
    (metaroot and coordinator) get `store_env` (`root_env`); all are SIGKILLed at the end."""
    started: list[Topo] = []

    async def make(store_env: dict[str, str] | None = None,
                   root_env: dict[str, str] | None = None) -> Topo:
        t = Topo(tmp_path / f"cluster{len(started)}", stores=3)
        started.append(t)
        shim = tmp_path / "shim"
        for proc in t.spec.processes:
            env = dict(store_env or {}) if proc.kind == "store" else dict(root_env or {})
            if env.get(UNSAFE_CANCEL_ENV):
                shim.mkdir(exist_ok=True)
                (shim / "sitecustomize.py").write_text(_SHIM)
                env["PYTHONPATH"] = os.pathsep.join(
                    [str(shim), str(REPO), os.environ.get("PYTHONPATH", "")])
            t.start_process(proc.name, env)
        await t.wait_ready()
        return t

    try:
        yield make
    finally:
        for t in started:
            t.stop_all()


# ---- helpers --------------------------------------------------------------------------------


async def split_region(c: Topo, client, key: bytes) -> tuple[int, str, int]:
    """(region id, TransitionID of a split at `key`, the region leader's store id)."""
    base = (await client.route(key, Freshness.STRONG)).descriptor
    leader = await c.leader_store(client, key)
    return base.region_id, f"split:{base.region_id}:{key.hex()}", leader


async def held_compensation(c: Topo, client, prefix: bytes):
    """Issue 22 sequence 1: hold the executor before its proposal, compensate meanwhile.
    Returns (data, tid, compensate reply, the split's own reply or error, the leader's
    process name)."""
    data = await put_keys(client, prefix)
    key = prefix + b"/5"
    rid, tid, leader = await split_region(c, client, key)
    name = f"store-{leader}"
    await c.failpoint(client, name, "store.before_propose", f"1*sleep({HOLD_MS})")
    answer: dict[str, object] = {}

    async def split() -> None:
        try:
            answer["split"] = await c.admin(client, AdminRequest(
                "split", rid, split_key=key, wait=True), leader)
        except (RemoteError, RpcError) as exc:
            answer["split"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(split)
        # the plan is published, the executor now sleeps before proposing
        await wait_until(lambda: _phase_is(c, client, tid, "ADMITTED"), 20,
                         what="the planned split in root")
        reply = await c.admin(client, AdminRequest(
            "compensate", rid, transition_id=tid,
            reason="test: failure reported while the executor is held"), leader)
    await c.failpoint(client, name, "store.before_propose", None)
    return data, tid, reply, answer["split"], name


async def _phase_is(c, client, tid, phase):
    return await c.phase(client, tid) == phase


# ---- 1. fence, then compensate ----------------------------------------------------------------


async def test_compensation_fences_a_held_executor(clusters):
    c = await clusters()
    async with c.client(timeout=10.0) as client:
        splits_before = await store_counter(c, client, "splits_applied")
        data, tid, reply, split_answer, name = await held_compensation(c, client, b"q")
        assert reply.detail.startswith("compensated"), reply
        # the executor woke up after the compensation and was refused: never proposed
        assert "fenced" in str(getattr(split_answer, "detail", split_answer)), split_answer
        tracked = await c.tracked(client, name, tid)
        assert tracked["stage"] == "COMPENSATED", tracked
        assert any("refused" in h["note"] and "fenced" in h["note"]
                   for h in tracked["history"]), tracked["history"]
        assert await store_counter(c, client, "fenced_proposals_refused", topology=True) >= 1
        await heartbeat_rounds(c, client)
        assert await store_counter(c, client, "splits_applied") == splits_before
        assert await unreadable(client, data) == []
        assert await outcomes(c, client, tid) == ["CANCELLED"]
        records = await c.recovery_records(client, tid)
        assert [r.action for r in records] == ["fenced", "compensated"], records
        fenced, compensated = records
        assert "had not proposed yet" in fenced.remained, fenced
        assert "fenced at index" in compensated.undone, compensated
        assert "restored" in compensated.undone and "keeps serving" in compensated.remained
        # the region still serves writes at its base descriptor
        await client.put(b"q/8", b"after")
        assert await client.get(b"q/8") == b"after"


@pytest.mark.slow  # the switch is caught in the slow tier (python -m pytest -m slow)
async def test_unsafe_compensation_is_caught(clusters):
    """The old fence (records nothing): the executor proposes after the cancel and splits."""
    c = await clusters(store_env={UNSAFE_ENV: "1"})
    async with c.client(timeout=10.0) as client:
        data, tid, reply, _, _ = await held_compensation(c, client, b"q")
        assert reply.detail.startswith("compensated"), reply

        async def caught():
            seen = await outcomes(c, client, tid)
            if "CANCELLED" in seen and "COMPLETED" in seen:
                return f"two outcomes: {seen}"
            return False

        assert await wait_until(caught, 30, 0.25, "the late split to complete after the cancel")


# ---- 2. root guards its own truth ---------------------------------------------------------------


async def raw_cancel_while_terminal_held(c: Topo, client, prefix: bytes):
    """Issue 22 sequence 2: the split applies, its terminal publish is held; a raw
    Append([SPLIT_CANCELLED]) goes straight to metaroot. Returns (data, tid, the append's
    answer or error)."""
    data = await put_keys(client, prefix)
    for n in c.store_names():
        await c.failpoint(client, n, "store.publish_terminal", "raise")
    rid, tid, leader = await split_region(c, client, prefix + b"/5")
    reply = await c.admin(client, AdminRequest("split", rid, split_key=prefix + b"/5",
                                               wait=True), leader)
    assert reply.outcome == "APPLIED", reply
    entry = next(e for e in (await c.transitions(client)).entries if e.transition_id == tid)
    left, right = sorted(entry.targets, key=lambda d: d.start_key)
    cancel = RootEvent(EventKind.SPLIT_CANCELLED,
                       RangeSplit(rid, right.start_key, left, right, entry.bases[0]))
    # an admin (or client) may not append to root at all
    with pytest.raises(RemoteError) as denied:
        await client.rpc.call(c.addr("metaroot-1"), AppendRequest([cancel]), timeout=10.0)
    assert denied.value.kind == "permission_denied", denied.value
    # a caller with the coordinator credential may: root's own guard is what refuses it
    async with c.rpc_as("coordinator") as rpc:
        try:
            answer: object = await rpc.call(c.addr("metaroot-1"), AppendRequest([cancel]),
                                            timeout=10.0)
        except RemoteError as exc:
            answer = exc
    return data, tid, answer


async def _release_terminal(c: Topo, client) -> None:
    for n in c.store_names():
        await c.failpoint(client, n, "store.publish_terminal", None)


async def test_root_refuses_a_raw_cancel_of_an_applied_split(clusters):
    c = await clusters()
    async with c.client(timeout=10.0) as client:
        try:
            data, tid, answer = await raw_cancel_while_terminal_held(c, client, b"r")
            assert isinstance(answer, RemoteError), answer
            assert answer.reason == "cancel_not_fenced", answer
            assert await c.phase(client, tid) == "ADMITTED"
            await heartbeat_rounds(c, client)
            assert await unreadable(client, data) == []
        finally:
            await _release_terminal(c, client)
        await wait_until(lambda: _phase_is(c, client, tid, "COMPLETED"), 30,
                         what="the held terminal to publish")
        assert await outcomes(c, client, tid) == ["COMPLETED"]
        assert await unreadable(client, data) == []
        route = await client.route(b"r/8", Freshness.STRONG)
        assert route.descriptor.start_key == b"r/5"


@pytest.mark.slow  # the switch is caught in the slow tier (python -m pytest -m slow)
async def test_root_without_its_guard_is_caught(clusters):
    c = await clusters(root_env={UNSAFE_CANCEL_ENV: "1"})
    async with c.client(timeout=10.0) as client:
        try:
            data, tid, answer = await raw_cancel_while_terminal_held(c, client, b"r")
            assert not isinstance(answer, Exception), answer  # root took the cancel
        finally:
            await _release_terminal(c, client)

        async def caught():
            seen = await outcomes(c, client, tid)
            if "CANCELLED" in seen and "COMPLETED" in seen:
                return f"two outcomes: {seen}"
            return False

        assert await wait_until(caught, 30, 0.25, "the split to complete after the cancel")
