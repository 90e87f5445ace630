"""Binding the ready-loop driver to the RPC raft transport.

Owns: turning the driver's outgoing `(group, to_node, message, epoch)` tuples into
`RaftEnvelope`s for the rpc `RaftTransport`, and the simplest receiving side (every envelope
is stepped into its group; unknown groups and wrong destinations are dropped and counted).
Stores, which must gate and create peers, install their own receiver.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from nokvpy.replication.driver import Driver
from nokvpy.rpc import RaftTransport, RpcClient, RpcServer
from nokvpy.wire import RaftBatch, RaftEnvelope

log = logging.getLogger("nokvpy.replication")


def make_sender(driver_ref: list[Driver], transport: RaftTransport, local_id: int):
    def send(out) -> None:
        driver = driver_ref[0]
        envelopes = []
        for group_id, to_node, msg, epoch in out:
            group = driver.groups.get(group_id)
            dest = group.route(to_node) if group is not None else None
            if dest is None:
                driver.counters["send_unroutable"] += 1
                continue
            envelopes.append(RaftEnvelope(group_id, local_id, dest, epoch[0], epoch[1], msg))
        transport.send(envelopes)

    return send


def impersonated(batch: RaftBatch, ctx) -> bool:
    """Does an authenticated sender claim to send for another node? (Its node id is proven
    by the role handshake only as far as the role goes; the batch must at least name it.)"""
    server = getattr(ctx, "server", None)
    if not getattr(getattr(server, "identity", None), "secret", None):
        return False  # no authentication: nothing was proven
    return batch.from_store != ctx.peer.node_id


def bind_transport(rpc: RpcClient, server: RpcServer, env, raftlog, local_id: int,
                   resolve: Callable[[int], str | None], tick_interval: float = 0.1,
                   ) -> tuple[RaftTransport, Driver]:
    """A transport and a driver wired to each other; registers the RaftBatch receiver."""
    transport = RaftTransport(rpc, resolve, local_id)
    ref: list[Driver] = []
    driver = Driver(env, raftlog, make_sender(ref, transport, local_id), tick_interval=tick_interval)
    ref.append(driver)
    drops: Counter[str] = driver.counters

    async def on_batch(batch: RaftBatch, ctx) -> None:
        if impersonated(batch, ctx):
            drops["raft_drop_impersonated_sender"] += len(batch.envelopes)
            return
        for env_ in batch.envelopes:
            if env_.from_store != batch.from_store or env_.message.frm != batch.from_store:
                drops["raft_drop_impersonated_sender"] += 1  # node ids are the peer ids here
                continue
            if env_.to_store != local_id:
                drops["raft_drop_wrong_destination"] += 1
                continue
            if not driver.step(env_.group_id, env_.message):
                drops["raft_drop_unknown_group"] += 1

    server.register(RaftBatch, on_batch, inline=True)
    return transport, driver
