"""Checks shared by the topology process tests: where a region is, what each store hosts,
admin requests sent to the region leader (retried across leader changes), and the
level-triggered end state every topology test requires (`settled`, `check_whole`)."""

from __future__ import annotations

import time

import trio
from recovery_helpers import unreadable
from topo_harness import Topo, wait_until

from nokvpy.protocol import Freshness
from nokvpy.protocol.store_rpc import AdminRequest
from nokvpy.rpc import RemoteError, RpcError

ADMIN_TIMEOUT = 40.0


async def region_of(c: Topo, client, key: bytes):
    return next(d for d in await c.regions(client) if d.contains(key))


async def hosted(c: Topo, client, name: str) -> dict[int, tuple[int, bool]]:
    """Region id -> (peer id, initialized) as store `name` reports it."""
    body = await c.status(client, name)
    return {int(r): (v["peer_id"], v["initialized"]) for r, v in body["regions"].items()}


async def admin(c: Topo, client, req: AdminRequest):
    """Send `req` to the region's leader (a follower forwards it once); a refusal that names
    a leader change is retried until the deadline."""
    deadline = time.monotonic() + ADMIN_TIMEOUT
    while True:
        d = next(d for d in await c.regions(client) if d.region_id == req.region_id)
        try:
            leader = await c.leader_store(client, d.start_key, timeout=10)
            left = max(1.0, deadline - time.monotonic())
            return await c.admin(client, req, leader, timeout=min(left, 20.0))
        except (RemoteError, RpcError, TimeoutError, trio.TooSlowError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{req.op} of region {req.region_id} on store "
                                     f"{req.store_id}: {exc!r}") from None
            await trio.sleep(0.5)


async def diagnose(c: Topo, client, rid: int) -> str:
    lines = [f"catalog: {[d for d in await c.regions(client) if d.region_id == rid]}"]
    for name in c.store_names():
        try:
            body = await c.status(client, name)
        except RpcError as exc:
            lines.append(f"{name}: {exc!r}")
            continue
        lines.append(f"{name}: regions={body['regions']} drops={body['drops']} "
                     f"tombstones={body['tombstones']} "
                     f"topology={body['topology'].get('counters')}")
    return "\n".join(lines)


async def settled(c: Topo, client, rid: int, timeout: float = 30.0):
    """Until the catalog lists 3 voters (no learner) for `rid` and every store hosts the
    catalog's peer id of it, initialized, at the catalog's epoch."""

    async def check():
        d = next((d for d in await c.regions(client) if d.region_id == rid), None)
        if d is None or len(d.voters()) != 3 or any(p.learner for p in d.peers):
            return None
        for p in d.peers:
            body = await c.status(client, f"store-{p.store_id}")
            r = body["regions"].get(str(rid))
            if r is None or r["peer_id"] != p.peer_id or not r["initialized"] or \
                    r["epoch"] != [d.epoch.version, d.epoch.conf_ver]:
                return None
        return d

    try:
        return await wait_until(check, timeout, 0.2, f"region {rid} to settle on 3 stores")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await diagnose(c, client, rid)}") from None


async def lacks(c: Topo, client, rid: int, store_id: int) -> bool:
    d = next(d for d in await c.regions(client) if d.region_id == rid)
    return d.peer_on(store_id) is None


async def check_whole(c: Topo, client, data: dict[bytes, bytes]) -> None:
    """Every region: 3 voters on 3 live stores; every store hosts exactly the catalog's
    peers; every key reads back; and still so with any one store killed (then restarted)."""
    regions = await c.regions(client)
    for d in regions:
        await settled(c, client, d.region_id)
    for name in c.store_names():
        sid = int(name.split("-")[1])
        want = {d.region_id: d.peer_on(sid).peer_id for d in regions if d.peer_on(sid)}
        got = {r: pid for r, (pid, init) in (await hosted(c, client, name)).items() if init}
        assert got == want, (name, got, want)
    assert await blocked_outboxes(c, client) == {}
    assert await unreadable(client, data) == []
    for name in c.store_names():
        c.kill(name)
        try:
            key = b"ra/kill-" + name.encode()
            with trio.fail_after(30):
                while True:
                    try:
                        await client.put(key, b"x")
                        break
                    except Exception:  # noqa: BLE001 - a new leader may still be elected
                        await trio.sleep(0.5)
            data[key] = b"x"
            assert await unreadable(client, data) == [], f"with {name} killed"
        finally:
            c.start_process(name)
        await c.wait_store(client, name)
        for d in await c.regions(client):
            await settled(c, client, d.region_id, timeout=60)
    route = await client.route(b"ra/", Freshness.STRONG)
    assert route.leader_store_id


async def blocked_outboxes(c: Topo, client) -> dict[str, list]:
    """Stores whose publish outbox holds an event root refused for good (blocked), with the
    entries: a whole cluster has none (a replica replaying history must not publish events
    root cannot take)."""
    out = {}
    for name in c.store_names():
        body = await c.status(client, name)
        if body["restart_state"].get("blocked_events", 0):
            out[name] = body["outbox"]
    return out

