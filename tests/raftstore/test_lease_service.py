"""The lease authority's expiry against its keep-alives (raftstore.leases), on a stand-in
store with a mock clock: a keep-alive that arrived before the deadline wins over a pass that
runs while its read barrier is still out; once a pass proposed a lease's delete, a keep-alive
of it answers "not found" even while the record is still there; a new term extends."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trio
import trio.testing

from nokvpy.protocol import PeerMeta, RegionDescriptor, RegionEpoch
from nokvpy.protocol.leases import (
    LeaseKeepAliveRequest,
    encode_ttl,
    lease_key,
)
from nokvpy.protocol.store_rpc import KvContext
from raftstore import leases as leases_mod
from raftstore.leases import LeaseService

DESC = RegionDescriptor(1, b"", b"", RegionEpoch(1, 1), (PeerMeta(1, 101),))
LEASE = 7


class FakeSM:
    def __init__(self, records: dict[bytes, bytes]):
        self.records = records

    def get(self, key: bytes) -> bytes | None:
        return self.records.get(key)

    def scan(self, lo: bytes, hi: bytes, limit: int):
        return [(k, v) for k, v in sorted(self.records.items()) if lo <= k < hi][:limit], False


class Barrier:
    """read_barrier's stand-in: blocks each call until `release`d."""

    def __init__(self):
        self.gate = trio.Event()
        self.calls = 0

    async def __call__(self, driver, peer, mode, deadline):
        self.calls += 1
        await self.gate.wait()

    def release(self) -> None:
        self.gate.set()


def make(records: dict[bytes, bytes]):
    proposals: list[bytes] = []
    proposed = trio.Event()

    async def propose(group, data):
        proposals.append(data)
        proposed.set()
        await trio.sleep_forever()  # the delete never commits in these tests

    peer = SimpleNamespace(region_id=1, descriptor=DESC, is_leader=True,
                           group=SimpleNamespace(term=3), sm=FakeSM(records))
    store = SimpleNamespace(
        peers={1: peer}, store_id=1, driver=SimpleNamespace(propose=propose),
        admit=lambda *a, **k: SimpleNamespace(accepted=True),
        tracker=SimpleNamespace(outcomes={}),
        refuse=lambda *a, **k: AssertionError(f"refused: {a}"))
    return LeaseService(store), peer, proposals, proposed


def keep_alive(svc: LeaseService):
    return svc.on_keep_alive(LeaseKeepAliveRequest(KvContext(1, DESC.epoch, 1), LEASE), None)


@pytest.fixture
def barrier(monkeypatch):
    b = Barrier()
    monkeypatch.setattr(leases_mod, "read_barrier", b)
    monkeypatch.setattr(leases_mod, "PROPOSE_TIMEOUT", 0.05)
    return b


async def test_a_keep_alive_in_flight_at_the_deadline_wins(barrier, autojump_clock):
    svc, peer, proposals, _ = make({lease_key(LEASE): encode_ttl(1000)})
    await svc._expire(peer)  # first seen at t=0: deadline 1.0
    assert svc.deadlines[LEASE] == pytest.approx(1.0)
    answer = []
    async with trio.open_nursery() as nursery:
        await trio.sleep(0.99)

        async def ka():
            answer.append(await keep_alive(svc))

        nursery.start_soon(ka)  # arrives at 0.99, its barrier out until released
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.26)  # t = 1.25: past the deadline
        await svc._expire(peer)
        assert proposals == []  # the keep-alive in flight holds the lease
        barrier.release()
    assert answer[0].found and svc.deadlines[LEASE] == pytest.approx(1.99)
    await svc._expire(peer)  # t = 1.25
    assert proposals == []
    await trio.sleep(0.8)  # t = 2.05
    await svc._expire(peer)
    assert len(proposals) == 1 and LEASE in svc.expiring


async def test_a_keep_alive_after_the_delete_was_proposed_is_not_found(barrier, autojump_clock):
    svc, peer, proposals, _ = make({lease_key(LEASE): encode_ttl(1000)})
    barrier.release()
    await svc._expire(peer)
    await trio.sleep(1.1)
    await svc._expire(peer)  # proposes the delete (never commits here)
    assert len(proposals) == 1
    reply = await keep_alive(svc)  # the record is still in the state machine
    assert not reply.found
    # a new term of this store's leadership starts afresh: extended, not expired
    peer.group.term = 4
    await svc._expire(peer)
    assert LEASE not in svc.expiring and svc.deadlines[LEASE] > trio.current_time()
    assert (await keep_alive(svc)).found
