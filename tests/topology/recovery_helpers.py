"""Helpers of the recovery race tests (issue 22): keys written and read back with deadlines,
the settled outcomes of a TransitionID, heartbeat rounds, store counters. A uniquely named
module: tests/ has no packages."""

from __future__ import annotations

import trio
from topo_harness import Topo, wait_until


async def put_keys(client, prefix: bytes, n: int = 10) -> dict[bytes, bytes]:
    data = {prefix + b"/%d" % i: b"v%d" % i for i in range(n)}
    for k, v in data.items():
        await client.put(k, v)
    return data


async def unreadable(client, data: dict[bytes, bytes]) -> list[bytes]:
    """Keys whose read fails or answers another value (each read has its own deadline)."""
    bad = []
    for k, v in data.items():
        try:
            with trio.fail_after(8):
                got = await client.get(k)
        except Exception:  # noqa: BLE001 - unreadable, whatever the error
            bad.append(k)
            continue
        if got != v:
            bad.append(k)
    return bad


async def outcomes(c: Topo, client, tid: str) -> list[str]:
    """Every settled phase ListTransitions' history shows for `tid` (oldest first)."""
    reply = await c.transitions(client)
    return [e.phase.name for e in reversed(reply.entries)
            if e.transition_id == tid and e.phase.name != "ADMITTED"]


async def heartbeat_rounds(c: Topo, client, rounds: int = 3, timeout: float = 30.0) -> None:
    """Until every store sent `rounds` more heartbeats: the coordinator's answers to them (what
    to host, what to tombstone) have been delivered and acted on."""
    names = c.store_names()
    start = {}
    for n in names:
        body = await wait_until(lambda n=n: c.status(client, n), timeout, 0.2,
                                f"the status of {n}", errors_ok=True)
        start[n] = body["heartbeats_sent"]

    async def done():
        for n in names:
            if (await c.status(client, n))["heartbeats_sent"] < start[n] + rounds:
                return False
        return True

    await wait_until(done, timeout, 0.2, f"{rounds} heartbeat rounds")


async def store_counter(c: Topo, client, key: str, topology: bool = False) -> int:
    total = 0
    for n in c.store_names():
        body = await c.status(client, n)
        counters = body["topology"].get("counters", {}) if topology else body["counters"]
        total += counters.get(key, 0)
    return total
