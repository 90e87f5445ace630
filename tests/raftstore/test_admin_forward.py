"""A follower forwards an admin request to its region's leader once; when the leader's store
cannot be reached, the follower answers with a clear error that names the leader store and
says whether the request may have run (never an internal handler exception). Real TCP: the
leader's address is a loopback port nothing listens on, or a server that never answers."""

from __future__ import annotations

import socket
from collections import Counter
from types import SimpleNamespace

import pytest
import trio

from nokvpy.protocol.store_rpc import AdminRequest
from nokvpy.rpc import RemoteError, RpcClient
from nokvpy.rpc.identity import Identity
from raftstore.topology.service import Topology


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def follower(rpc, leader_addr: str):
    store = SimpleNamespace(store_id=2, store_addrs={1: leader_addr}, rpc=rpc)
    return SimpleNamespace(store=store, counters=Counter())


async def test_an_unreachable_leader_is_named_and_the_request_was_not_executed():
    async with RpcClient(Identity("c", "store", 2), connect_timeout=1.0) as rpc:
        me = follower(rpc, closed_port())
        with trio.fail_after(20), pytest.raises(RemoteError) as exc:
            await Topology._forward(me, AdminRequest("remove_peer", 7, store_id=3), 1)
    e = exc.value
    assert e.kind == "unavailable" and e.reason == "NOT_LEADER", e
    assert "store 1" in e.message and "not executed" in e.message, e.message
    assert e.details.get("leader_store_id") == 1
    assert me.counters["admin_forward_failed"] == 1


async def test_a_leader_that_takes_the_request_and_never_answers_is_outcome_unknown():
    class Silent:
        async def call(self, addr, req, timeout):
            from nokvpy.rpc.errors import RpcTimeoutError

            raise RpcTimeoutError(addr, "AdminRequest", timeout, sent=True)

    me = follower(Silent(), "127.0.0.1:1")
    with pytest.raises(RemoteError) as exc:
        await Topology._forward(me, AdminRequest("split", 7, split_key=b"k"), 1)
    assert exc.value.kind == "timeout" and "outcome UNKNOWN" in exc.value.message
