"""Leases on a real cluster: a key written with a lease lives while the lease is kept alive and
is deleted through raft once it expires or is revoked (a watch sees the delete); a key written
again without the lease stays; a put with a lease that is gone is refused; no key is deleted
while its lease is kept alive through a kill -9 of the authority's store."""

from __future__ import annotations

import signal
import time

import pytest
import trio
from topo_harness import Topo, wait_until

from nokvpy.client import LeaseNotFoundError
from nokvpy.protocol.leases import lease_key

pytestmark = pytest.mark.cluster

TOPO_OPTIONS = {"stores": 3}


async def _gone(client, key):
    return await client.get(key) is None


async def test_a_kept_alive_lease_keeps_its_key_and_an_expired_one_loses_it(module_topo):
    c = module_topo
    async with c.client() as client:
        lease = await client.grant(2.0)
        assert lease in await client.leases()
        await client.put(b"ls/a", b"1", lease=lease)
        await client.put(b"ls/b", b"2", lease=lease)
        await client.put(b"ls/b", b"2 again, no lease")  # detached: outlives the lease
        deadline = trio.current_time() + 4.0
        while trio.current_time() < deadline:  # twice the TTL, kept alive
            sent = time.monotonic()
            assert await client.keep_alive(lease) == 2.0
            assert await client.get(b"ls/a") == b"1"
            await trio.sleep(0.5)
        async with client.watch(b"ls/", prefix=True) as w:
            await wait_until(lambda: _gone(client, b"ls/a"), 10, what="the key to expire")
            gone_after = time.monotonic() - sent
            ev = await w.next(5)
        print(f"deleted {gone_after:.2f} s after the last keep-alive was sent (TTL 2 s)")
        assert 2.0 <= gone_after <= 2.0 + 2.0, gone_after  # not early; at most TTL + 2 s late
        assert ev is not None and (ev.kind, ev.key) == ("delete", b"ls/a")
        assert await client.get(b"ls/b") == b"2 again, no lease"
        with pytest.raises(LeaseNotFoundError):
            await client.keep_alive(lease)
        with pytest.raises(LeaseNotFoundError):
            await client.put(b"ls/c", b"3", lease=lease)
        assert lease not in await client.leases()


async def test_revoke_deletes_the_keys(module_topo):
    c = module_topo
    async with c.client() as client:
        lease = await client.grant(60)
        for i in range(5):
            await client.put(b"lr/%d" % i, b"v", lease=lease)
        await client.revoke(lease)
        assert await client.get(lease_key(lease)) is None
        for i in range(5):
            await wait_until(lambda i=i: _gone(client, b"lr/%d" % i), 10,
                             what="the revoked lease's keys to go")


async def test_no_key_is_deleted_while_kept_alive_through_an_authority_kill(module_topo):
    await kept_alive_through_an_authority_kill(module_topo)


TTL = 6.0  # longer than an election plus a few lease passes: a failover must not expire it


class LeaseLostError(AssertionError):
    """A key of a lease kept alive was deleted, or the lease itself was lost."""


async def kept_alive_through_an_authority_kill(c, env: dict[str, str] | None = None) -> None:
    async with c.client() as client:
        for name in c.store_names():
            await c.wait_store(client, name)
        lease = await client.grant(TTL)
        await client.put(b"lk/a", b"1", lease=lease)
        leader = await c.leader_store(client, lease_key(lease))
        name = f"store-{leader}"
        stop = trio.Event()
        lost: list[float] = []
        kept = trio.Event()

        async def keep() -> None:
            while not stop.is_set():
                try:
                    await client.keep_alive(lease, timeout=1.0)
                    kept.set()
                except LeaseNotFoundError:
                    lost.append(time.monotonic())
                    return
                except Exception:  # noqa: BLE001 - the authority is being replaced
                    pass
                await trio.sleep(TTL / 3)  # as etcd's clients do

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep)
                await kept.wait()
                c.kill(name)  # just after a keep-alive: the next comes in TTL / 3
                for _ in range(24):  # 7 s: longer than the TTL, the old authority dead
                    if await client.get(b"lk/a", timeout=10) != b"1":
                        raise LeaseLostError("a key of a lease kept alive was deleted")
                    await trio.sleep(0.3)
                stop.set()
        finally:
            c.start_process(name, env)
        if lost:
            raise LeaseLostError(f"the lease was lost while kept alive: {lost}")
        await c.wait_store(client, name)
        await client.revoke(lease)
        await wait_until(lambda: _gone(client, b"lk/a"), 15, what="the key to go")


@pytest.mark.slow  # python -m pytest -m slow tests/topology/test_leases.py
@pytest.mark.parametrize("seed", range(3))
async def test_unsafe_lease_extend_is_caught(tmp_path, seed):
    """NOKV_UNSAFE_LEASE_EXTEND=1: a new authority does not extend what it cannot judge; the
    failover expires a lease that was kept alive."""
    env = {"NOKV_UNSAFE_LEASE_EXTEND": "1"}
    t = Topo(tmp_path / "cluster", stores=3)
    try:
        for proc in t.spec.processes:
            t.start_process(proc.name, env if proc.kind == "store" else None)
        await t.wait_ready()
        try:
            await kept_alive_through_an_authority_kill(t, env)
        except BaseException as exc:  # noqa: BLE001 - raised in the nursery or after it
            if not _holds(exc, LeaseLostError):
                raise
        else:
            pytest.fail("NOKV_UNSAFE_LEASE_EXTEND=1 lost no lease")
    finally:
        t.stop_all()


def _holds(exc: BaseException, kind: type) -> bool:
    if isinstance(exc, kind):
        return True
    return isinstance(exc, BaseExceptionGroup) and any(_holds(e, kind) for e in exc.exceptions)


@pytest.mark.slow  # ~20 s: python -m pytest -m slow tests/topology/test_leases.py
async def test_no_key_is_deleted_while_kept_alive_through_a_pause_of_the_authority(module_topo):
    """SIGSTOP the authority's store for twice the TTL while the client keeps the lease alive
    (the region elects elsewhere and the new authority extends it), then SIGCONT it: the old
    authority, past every deadline it knew, must not delete anything (its proposals belong to
    a deposed term) and the key lives on."""
    c = module_topo
    async with c.client() as client:
        for name in c.store_names():
            await c.wait_store(client, name)
        lease = await client.grant(TTL)
        await client.put(b"lp/a", b"1", lease=lease)
        name = f"store-{await c.leader_store(client, lease_key(lease))}"
        stop = trio.Event()
        lost: list[float] = []

        async def keep() -> None:
            while not stop.is_set():
                try:
                    await client.keep_alive(lease, timeout=1.0)
                except LeaseNotFoundError:
                    lost.append(time.monotonic())
                    return
                except Exception:  # noqa: BLE001 - the authority is being replaced
                    pass
                await trio.sleep(TTL / 3)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep)
                await trio.sleep(0.5)
                c.cluster.signal(name, signal.SIGSTOP)
                await trio.sleep(2 * TTL)
                c.cluster.signal(name, signal.SIGCONT)
                for _ in range(20):  # 6 s after the resume
                    if await client.get(b"lp/a", timeout=10) != b"1":
                        raise LeaseLostError("a key of a lease kept alive was deleted")
                    await trio.sleep(0.3)
                stop.set()
        finally:
            c.cluster.signal(name, signal.SIGCONT)
        if lost:
            raise LeaseLostError(f"the lease was lost while kept alive: {lost}")
        await client.revoke(lease)
        await wait_until(lambda: _gone(client, b"lp/a"), 15, what="the key to go")


@pytest.mark.slow  # ~15 s: python -m pytest -m slow tests/topology/test_leases.py
async def test_a_lease_whose_authority_dies_expires_within_ttl_plus_2s(module_topo):
    """One keep-alive, then kill -9 of the authority's store and no keep-alive again: the new
    authority gives the lease a TTL from when it took over, so the key goes after the TTL
    (never earlier) and within TTL + 2 s of that keep-alive's send (an election is faster
    than 2 s here)."""
    c = module_topo
    async with c.client() as client:
        for name in c.store_names():
            await c.wait_store(client, name)
        lease = await client.grant(TTL)
        await client.put(b"le/a", b"1", lease=lease)
        name = f"store-{await c.leader_store(client, lease_key(lease))}"
        sent = time.monotonic()
        await client.keep_alive(lease)
        c.kill(name)
        try:
            await wait_until(lambda: _gone(client, b"le/a"), 3 * TTL, 0.1,
                             what="the key to expire", errors_ok=True)
            after = time.monotonic() - sent
        finally:
            c.start_process(name)
        print(f"deleted {after:.2f} s after the last keep-alive was sent (TTL {TTL:g} s)")
        assert TTL <= after <= TTL + 2.0, after
        await c.wait_store(client, name)
