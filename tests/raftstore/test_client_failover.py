"""Real store processes: the client leaves a hung (SIGSTOPped) region leader.

Three `nokv store serve` processes and the fake coordinator (in the test) on loopback. The
client caches the region leader, the leader's process is paused, and the client keeps
writing with a modest per-put timeout: a put sent to the paused store comes back as outcome
unknown, but the next ones go to the other stores, so the first put is acknowledged soon
after they elect a new leader, and no put goes to the paused store again. A get issued at
the pause by a second client fails over within its own deadline. After SIGCONT the old
leader serves no stale read, the clients read the newest acknowledged value, and the
resumed store catches up.
"""

from __future__ import annotations

import signal

import pytest
import trio
from test_processes import status, three_stores, wait_leader

from nokvpy.client import Client, DeadlineExceededError, OutcomeUnknownError, UnavailableError
from nokvpy.protocol.store_rpc import GetRequest, KvContext
from nokvpy.rpc import Identity, RemoteError, RpcClient

pytestmark = pytest.mark.cluster

KEY = b"failover/k"
PUT_TIMEOUT = 1.0
PAUSE = 3.0  # how long the leader stays stopped (at least)
FAILOVER_BUDGET = 2.0  # new leader elected -> first acknowledged put


class RecordingRpc(RpcClient):
    """An RpcClient that remembers when it sent what to whom."""

    def __init__(self) -> None:
        super().__init__(Identity("nokv", "client", 0))
        self.sent: list[tuple[float, str, str]] = []

    async def call(self, addr, request, timeout):
        self.sent.append((trio.current_time(), addr, type(request).__name__))
        return await super().call(addr, request, timeout)


async def test_client_leaves_a_paused_leader(tmp_path):
    async with three_stores(tmp_path) as (procs, addrs, coord, rpc):
        await wait_leader(rpc, addrs)
        async with Client([coord], timeout=10.0, rpc=RecordingRpc()) as client, \
                Client([coord], timeout=10.0, attempt_timeout=1.0) as reader:
            # init: both clients cache the leader of KEY's region, and it is the leader
            await client.put(KEY, b"v0")
            assert await reader.get(KEY) == b"v0"
            paused = client.cached_leader(KEY)
            assert reader.cached_leader(KEY) == paused
            body = await status(rpc, addrs[paused])
            assert body is not None and body["regions"]["1"]["leader"], body
            others = {sid: a for sid, a in addrs.items() if sid != paused}

            # act: pause the leader; keep writing while polling the others for a leader
            procs[paused].send_signal(signal.SIGSTOP)
            try:
                t_stop = trio.current_time()
                new_leader: dict[str, float | int] = {}
                acked: list[tuple[int, float]] = []  # (value number, acknowledged at)
                unknown: list[tuple[int, str]] = []

                async def poll_leader() -> None:
                    while True:
                        for sid, addr in others.items():
                            body = await status(rpc, addr)
                            if body is not None and body["regions"].get("1", {}).get("leader"):
                                new_leader.update(store=sid, at=trio.current_time())
                                return
                        await trio.sleep(0.02)

                async def write() -> None:
                    n = 0
                    while True:
                        n += 1
                        try:
                            await client.put(KEY, b"v%d" % n, timeout=PUT_TIMEOUT)
                        except (OutcomeUnknownError, DeadlineExceededError,
                                UnavailableError) as exc:
                            unknown.append((n, type(exc).__name__))
                            continue
                        acked.append((n, trio.current_time()))
                        if new_leader and trio.current_time() - t_stop >= PAUSE:
                            return

                read: dict[str, bytes | float | None] = {}

                async def read_once() -> None:  # one get: it must fail over by itself
                    value = await reader.get(KEY, timeout=10.0)
                    read.update(value=value, at=trio.current_time())

                with trio.move_on_after(20) as scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(poll_leader)
                        nursery.start_soon(write)
                        nursery.start_soon(read_once)
                elected = (f"store {new_leader['store']} after "
                           f"{float(new_leader['at']) - t_stop:.3f} s" if new_leader else "none")
                print(f"paused store {paused}; new leader: {elected}; acked {len(acked)} "
                      f"(first at {acked[0][1] - t_stop if acked else 0:.3f} s after the "
                      f"pause); unknown {unknown}")
                assert not scope.cancelled_caught, (
                    f"no put acknowledged within 20 s of pausing store {paused} "
                    f"(new leader: {new_leader or 'none seen'}; {len(unknown)} puts failed: "
                    f"{unknown[:5]}...)")
                # check: the first put acknowledged after the pause came soon after the election
                failover = acked[0][1] - float(new_leader["at"])
                read_failover = float(read["at"]) - float(new_leader["at"])
                print(f"failover: new leader after {float(new_leader['at']) - t_stop:.3f} s, "
                      f"first acknowledged put {failover:.3f} s later, the get that was "
                      f"issued at the pause returned {read_failover:.3f} s later")
                assert failover <= FAILOVER_BUDGET, failover
                assert read_failover <= FAILOVER_BUDGET, read_failover
                # once it moved on, the writer never went back to the paused store
                sent_to_paused = [t for t, addr, what in client.rpc.sent
                                  if addr == addrs[paused] and what == "PutRequest"
                                  and t >= acked[0][1]]
                assert sent_to_paused == [], (len(sent_to_paused), unknown)
                attempted = {b"v0"} | {b"v%d" % n for n, _ in acked + unknown}
                assert read["value"] in attempted, read
                assert client.cached_leader(KEY) != paused
                epoch = (await client.route(KEY)).descriptor.epoch
            finally:
                procs[paused].send_signal(signal.SIGCONT)

            # check: the resumed old leader serves no stale linearizable read, the newest
            # acknowledged value is what the client's gets return, and the resumed store
            # steps down and catches up with the new leader
            newest = b"v%d" % acked[-1][0]
            try:
                old = await rpc.call(addrs[paused], GetRequest(KvContext(1, epoch, paused), KEY),
                                     timeout=5.0)
            except RemoteError as exc:
                print(f"get on the resumed store {paused}: {exc.kind}/{exc.reason}")
            else:
                print(f"get on the resumed store {paused}: {old.value!r} (newest {newest!r})")
                assert old.value == newest, (old, newest)
            assert await client.get(KEY) == newest
            assert await reader.get(KEY) == newest
            leader = await wait_leader(rpc, addrs, exclude=(paused,))
            with trio.fail_after(20):
                while True:
                    resumed, current = await status(rpc, addrs[paused]), await status(
                        rpc, addrs[leader])
                    if (resumed is not None and current is not None
                            and not resumed["regions"]["1"]["leader"]
                            and resumed["regions"]["1"]["applied_index"]
                            >= current["regions"]["1"]["applied_index"]):
                        break
                    await trio.sleep(0.05)
            assert resumed["restart_state"]["state"] == "READY"
            await client.put(KEY, b"after")
            assert await client.get(KEY) == b"after"
