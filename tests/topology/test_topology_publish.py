"""The terminal publish boundary (DESIGN 5): APPLIED and TERMINAL_PUBLISHED are different
states; a failing publish is TERMINAL_FAILED with its last error (and the store's topology
admission SCHEDULER_DEGRADED) until it succeeds; a permanent refusal is TERMINAL_BLOCKED,
kept and visible; a crash between apply and publish is repaired by the durable outbox."""

from __future__ import annotations

import pytest
import trio
from topo_harness import wait_until

from nokvpy.protocol import Freshness
from nokvpy.protocol.store_rpc import AdminRequest
from nokvpy.rpc import RemoteError, RpcError

pytestmark = pytest.mark.cluster

TOPO_OPTIONS = {"stores": 3}


async def stage_of(c, client, name: str, tid: str, stages: set[str]):
    rec = await c.tracked(client, name, tid)
    return rec if rec is not None and rec["stage"] in stages else None


async def test_failing_terminal_publish_is_visible_then_published(module_topo):
    c = module_topo
    async with c.client() as client:
        await client.put(b"a/1", b"x")
        leader = await c.leader_store(client, b"a/1")
        name = f"store-{leader}"
        for store in c.store_names():  # no replica may publish while the failpoint holds
            await c.failpoint(client, store, "store.publish_terminal", "raise")
        try:
            reply = await c.split(client, b"a/5", wait=False)
            tid = reply.transition_id
            assert reply.stage in ("EXECUTING", "APPLIED", "TERMINAL_PENDING",
                                   "TERMINAL_FAILED"), reply
            rec = await wait_until(lambda: stage_of(c, client, name, tid, {"TERMINAL_FAILED"}),
                                   15, what="TERMINAL_FAILED")
            assert rec["publish_state"] == "PUBLISH_FAILED"
            assert rec["outcome"] == "APPLIED"
            assert "failpoint" in rec["last_error"], rec
            assert rec["publish_attempts"] >= 1
            # applied but not published: root still has it pending
            assert await c.phase(client, tid) == "ADMITTED"
            # while the outbox fails, new topology work on this store is refused
            body = await c.status(client, name)
            assert body["topology"]["outbox"]["failing"] is True
            pending = [e for e in body["topology"]["outbox"]["pending"] if e["transition_id"] == tid]
            assert pending and pending[0]["last_error"], body["topology"]["outbox"]
            region = (await client.route(b"a/1", Freshness.BEST_EFFORT)).descriptor.region_id
            with pytest.raises(RemoteError) as refused:
                await c.admin(client, AdminRequest("split", region, split_key=b"a/2"), leader)
            assert refused.value.reason == "SCHEDULER_DEGRADED", refused.value
            # still failing after several retries (backoff), never silently dropped
            await trio.sleep(1.5)
            rec = await c.tracked(client, name, tid)
            assert rec["stage"] == "TERMINAL_FAILED" and rec["publish_attempts"] >= 2, rec
        finally:
            for store in c.store_names():
                await c.failpoint(client, store, "store.publish_terminal", None)
        rec = await wait_until(lambda: stage_of(c, client, name, tid, {"TERMINAL_PUBLISHED"}),
                               15, what="TERMINAL_PUBLISHED")
        assert rec["publish_state"] == "PUBLISHED" and rec["last_error"] == ""
        assert await c.phase(client, tid) == "COMPLETED"
        body = await wait_until(lambda: _not_failing(c, client, name), 10, what="recovered")
        assert body["topology"]["outbox"]["pending"] == []


async def _not_failing(c, client, name):
    body = await c.status(client, name)
    return body if not body["topology"]["outbox"]["failing"] else None


async def test_permanently_refused_publish_is_blocked_and_kept(module_topo):
    c = module_topo
    async with c.client() as client:
        await client.put(b"b/1", b"x")
        leader = await c.leader_store(client, b"b/1")
        name = f"store-{leader}"
        await c.failpoint(client, name, "store.publish_terminal", 'return("refused by test")')
        try:
            reply = await c.split(client, b"b/5")
            tid = reply.transition_id
            rec = await wait_until(lambda: stage_of(c, client, name, tid, {"TERMINAL_BLOCKED"}),
                                   15, what="TERMINAL_BLOCKED")
        finally:
            await c.failpoint(client, name, "store.publish_terminal", None)
        assert rec["publish_state"] == "BLOCKED"
        assert "refused by test" in rec["last_error"], rec
        # the other replicas' backup copies complete it in root; the blocked entry stays
        assert await wait_until(lambda: _completed(c, client, tid), 15, what="COMPLETED")
        await trio.sleep(1.0)
        body = await c.status(client, name)
        blocked = [b for b in body["topology"]["outbox"]["blocked"] if b["transition_id"] == tid]
        assert blocked and "refused by test" in blocked[0]["error"], body["topology"]["outbox"]
        assert body["transitions"][tid]["stage"] == "TERMINAL_BLOCKED"


async def _completed(c, client, tid):
    return await c.phase(client, tid) == "COMPLETED"


async def test_crash_after_apply_before_publish_outbox_publishes_on_restart(topo):
    c = await topo(stores=3)
    async with c.client() as client:
        await client.put(b"c/1", b"before")
        leader = await c.leader_store(client, b"c/1")
        name = f"store-{leader}"
        others = [n for n in c.store_names() if n != name]
        for n in others:  # only the crashed executor can publish it
            await c.failpoint(client, n, "store.publish_terminal", "raise")
        await c.failpoint(client, name, "store.after_apply_before_publish", "exit")
        route = await client.route(b"c/5")
        try:
            reply = await c.admin(client, AdminRequest("split", route.descriptor.region_id,
                                                       split_key=b"c/5"), leader)
            tid = reply.transition_id
        except RpcError:
            tid = f"split:{route.descriptor.region_id}:{b'c/5'.hex()}"
        await wait_until(lambda: _dead(c, name), 15, what=f"{name} to exit")
        # applied on the executor (durably, with the terminal event in its outbox), not in root
        assert await c.phase(client, tid) == "ADMITTED"
        c.start_process(name)
        await wait_until(lambda: _completed(c, client, tid), 30, what="COMPLETED after restart")
        rec = await wait_until(lambda: stage_of(c, client, name, tid, {"TERMINAL_PUBLISHED"}),
                               15, what="restarted store publishes")
        notes = [h["note"] for h in rec["history"]]
        assert any("restored from the outbox" in n for n in notes), rec
        body = await c.status(client, name)
        assert body["restart_state"]["outbox_backlog"] == 0
        assert "publish outbox backlog" in " ".join(body["restart_state"]["reasons"])
        # what a restart would find now: the backlog is gone, so the store is READY again
        assert body["restart_state"]["state"] == "DEGRADED"

        async def ready_now():
            cur = (await c.status(client, name))["current_state"]
            return cur if cur["state"] == "READY" and cur["outbox_backlog"] == 0 else None

        await wait_until(ready_now, 10, what="current state READY once the outbox drained")
        for n in others:
            await c.failpoint(client, n, "store.publish_terminal", None)
        assert await client.get(b"c/1") == b"before"
        await client.put(b"c/7", b"after")
        assert await client.get(b"c/7") == b"after"


async def _dead(c, name):
    return not c.alive(name)
