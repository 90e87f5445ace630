"""Jepsen-lite for metaroot, 3 real peers: kill -9 the leader under concurrent appends.

DESIGN 4.1 / 4.2: rooted events get dense, monotonic tokens; an acknowledged append survives
the loss of the leader (Raft section 5.4, leader completeness); an append whose reply was lost
is applied at most once and a retry with the same request id is answered with the original
token; a watcher resumes from its last token with no gap and no duplicate.
"""

from __future__ import annotations

import collections

import pytest
import trio
from metaroot_procs import MetarootProcs, joined

from nokvpy.client.errors import UnavailableError
from nokvpy.protocol import CommittedEvent, RootEvent, RootToken
from nokvpy.protocol.metaroot_rpc import AppendRequest, ConfirmTokenRequest, WatchRequest
from nokvpy.rpc import RemoteError, RpcClient, RpcError, RpcTimeoutError

pytestmark = pytest.mark.cluster

ZERO = RootToken(0, 0)


async def read_log(rpc: RpcClient, addr: str, upto: int, deadline: float = 20.0,
                   ) -> list[CommittedEvent]:
    """Every committed event 1..upto, read with Watch(after=0) from one peer."""
    out: list[CommittedEvent] = []
    with trio.fail_after(deadline):
        async with rpc.stream(addr, WatchRequest(ZERO, keepalive_ms=100)) as items:
            async for item in items:
                assert not item.bootstrap_required, "retained tail too small for this test"
                out.extend(item.events)
                if out and out[-1].token.index >= upto:
                    return out
    raise AssertionError(f"watch on {addr} ended at {len(out)} events")


class Watcher:
    """Follows the log across peers; resumes from its last token after every failure."""

    def __init__(self, cluster: MetarootProcs, rpc: RpcClient, first: int):
        self.cluster = cluster
        self.rpc = rpc
        order = sorted(cluster.addrs)
        i = order.index(first)
        self.order = order[i:] + order[:i]
        self.last = ZERO
        self.seen: list[CommittedEvent] = []
        self.resumes = 0

    async def run(self) -> None:
        turn = 0
        while True:
            addr = self.cluster.addrs[self.order[turn % len(self.order)]]
            try:
                async with self.rpc.stream(addr, WatchRequest(self.last, keepalive_ms=100)) as it:
                    async for item in it:
                        assert not item.bootstrap_required
                        for ce in item.events:
                            # no gap, no duplicate, across every resume
                            assert ce.token.index == self.last.index + 1, (ce.token, self.last)
                            assert ce.token.term >= self.last.term
                            self.seen.append(ce)
                            self.last = ce.token
            except RpcError:
                pass
            turn += 1
            self.resumes += 1
            await trio.sleep(0.05)


async def test_leader_kill_keeps_acknowledged_appends_and_dedups_retries(tmp_path):
    cluster = MetarootProcs(tmp_path, 3)
    acked: dict[str, tuple[RootToken, bool]] = {}  # request id -> (token, duplicate reply)
    unknown: dict[str, RootEvent] = {}  # request id -> event whose outcome is unknown
    events: dict[str, RootEvent] = {}
    try:
        # init
        cluster.start_all()
        rpc = cluster.rpc(910)
        old_leader = await cluster.wait_leader(rpc)
        watcher = Watcher(cluster, cluster.rpc(911), first=old_leader)
        stop = trio.Event()

        async def client(k: int) -> None:
            crpc = cluster.rpc(920 + k)
            meta = cluster.meta(crpc, timeout=15.0)
            i = 0
            while not stop.is_set():
                rid = f"c{k}-{i}"
                ev = joined(1000 * (k + 1) + i, rid)
                events[rid] = ev
                try:
                    reply = await meta.call(AppendRequest([ev]))
                except (UnavailableError, RemoteError) as exc:
                    if isinstance(exc, RemoteError):
                        assert exc.kind == "unavailable", exc  # a dropped proposal, never a refusal
                    unknown[rid] = ev
                else:
                    acked[rid] = (reply.first_token, reply.duplicate)
                i += 1
            await crpc.aclose()

        async def impatient() -> None:
            """Gives up on each append after a few ms: its replies are lost, but the appends
            were sent and usually apply (outcome unknown)."""
            crpc = cluster.rpc(930)
            meta = cluster.meta(crpc, timeout=15.0)
            i = 0
            while not stop.is_set():
                rid = f"lost-{i}"
                ev = joined(900_000 + i, rid)
                events[rid] = ev
                try:
                    await meta.call(ConfirmTokenRequest())  # find the leader, warm the link
                    await crpc.call(meta.leader, AppendRequest([ev]), timeout=0.002)
                except RpcTimeoutError as exc:
                    if exc.sent:
                        unknown[rid] = ev
                    else:
                        events.pop(rid)
                except (RpcError, UnavailableError):
                    unknown[rid] = ev
                else:
                    unknown[rid] = ev  # answered in time: checked like a lost one anyway
                i += 1
                await trio.sleep(0.01)
            await crpc.aclose()

        async def wait_acks(n: int, deadline: float = 30.0) -> None:
            with trio.fail_after(deadline):
                while len(acked) < n:
                    await trio.sleep(0.02)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.run)
            for k in range(4):
                nursery.start_soon(client, k)
            nursery.start_soon(impatient)
            # act: kill -9 the leader mid-stream
            await wait_acks(60)
            cluster.kill(old_leader)
            at_kill = len(acked)
            others = [n for n in cluster.addrs if n != old_leader]
            new_leader = await cluster.wait_leader(rpc, among=others)
            assert new_leader != old_leader
            await wait_acks(at_kill + 60)
            # the killed peer comes back on its data dir and catches up
            cluster.start(old_leader)
            await wait_acks(at_kill + 120)
            stop.set()
            # check: all three peers converge on the confirmed token
            meta = cluster.meta(rpc)
            with trio.fail_after(30):
                while stop.is_set() and len(unknown) + len(acked) < len(events):
                    await trio.sleep(0.02)  # clients finish their last call
            final = (await meta.call(ConfirmTokenRequest())).token
            for node_id in cluster.addrs:
                await cluster.wait_token(rpc, node_id, final.index)
            with trio.fail_after(20):
                while watcher.last.index < final.index:
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()

        logs = {n: await read_log(rpc, cluster.addrs[n], final.index) for n in cluster.addrs}
        log = logs[old_leader]
        assert all(other == log for other in logs.values()), "peers disagree on the log"
        # dense, monotonic tokens
        assert [ce.token.index for ce in log] == list(range(1, final.index + 1))
        assert all(a.token.term <= b.token.term for a, b in zip(log, log[1:], strict=False))
        assert log[-1].token.term > log[0].token.term, "no new leader term in the log"
        where = collections.defaultdict(list)
        for ce in log:
            where[ce.event.request_id].append(ce.token)
        # every acknowledged append is present exactly once, at the acknowledged token
        for rid, (token, _) in acked.items():
            assert where[rid] == [token], (rid, token, where[rid])
        # a lost reply: present exactly once or absent; the retry answers the original token
        present = sum(1 for rid in unknown if where[rid])
        assert present >= 1, "no lost reply was exercised"
        for rid, ev in unknown.items():
            assert len(where[rid]) <= 1, (rid, where[rid])
            reply = await meta.call(AppendRequest([ev]))
            if where[rid]:
                assert reply.duplicate and reply.first_token == where[rid][0]
            else:
                assert not reply.duplicate and reply.first_token.index > final.index
            again = await meta.call(AppendRequest([ev]))
            assert again.duplicate and again.first_token == reply.first_token
        # the watcher saw exactly the log, in order, across its resumes
        assert watcher.seen[:final.index] == log
        assert watcher.resumes >= 1, "the watcher never lost its stream"
        duplicates = sum(1 for _, dup in acked.values() if dup)
        print(f"acked={len(acked)} unknown={len(unknown)} (present {present}) "
              f"duplicate-replies={duplicates} "
              f"final={final} watcher-resumes={watcher.resumes}")
        await rpc.aclose()
    finally:
        cluster.kill_all()
