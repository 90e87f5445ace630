"""Seeded randomized topology operations on real processes (issue 15), slow tier.

Each seed starts a 3-store cluster (metaroot, coordinator, stores on loopback; every process
killed by pid in `finally`, files under tmp_path), keeps 4 writers putting unique keys, and
runs a random sequence of splits, merges, replica removals, re-adds on the same store,
additions and leader transfers, with a store killed or paused (SIGSTOP) between them and
healed later, at most one at a time. Operations may fail (a fault can cost a region its
quorum); that is allowed. What is not allowed: after the last fault heals, the cluster must
pass the recovery check within RECOVERY_BOUND seconds: every region has 3 voters (no
learner) on 3 live stores and a leader, every store hosts exactly the catalog's peers,
initialized, at the catalog's epoch, no store's publish outbox is blocked, and every
acknowledged key reads back its value.

The coordinator runs with `replica_after=3`: a region left short of (or over) the
replication by an operation a fault cut short gets its peer count restored.

    python -m pytest tests/topology/test_topology_random.py -m slow -q
    NOKV_TOPO_SEEDS=50 NOKV_TOPO_FIRST_SEED=0 python -m pytest ... -m slow

A failing seed prints the seed, every step taken and each store's view.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
import trio
from recovery_helpers import unreadable
from topo_harness import Topo
from topology_checks import diagnose

from nokvpy.protocol.store_rpc import AdminRequest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

FIRST = int(os.environ.get("NOKV_TOPO_FIRST_SEED", "0"))
SEEDS = int(os.environ.get("NOKV_TOPO_SEEDS", "50"))
STEPS = 14
RECOVERY_BOUND = 45.0
OP_TIMEOUT = 12.0


class Run:
    def __init__(self, c: Topo, seed: int):
        self.c = c
        self.rng = random.Random(f"topology-{seed}")
        self.steps: list[str] = []
        self.faulted: tuple[str, str] | None = None  # (store, "kill" | "pause")
        self.data: dict[bytes, bytes] = {}
        self.t0 = time.monotonic()

    def log(self, text: str) -> None:
        self.steps.append(f"{time.monotonic() - self.t0:6.1f}s {text}")

    async def writer(self, w: int) -> None:
        async with self.c.client(timeout=5) as client:
            i = 0
            while True:
                key, value = b"k/%03d/%d/%d" % (self.rng.randrange(100), w, i), b"v%d" % i
                i += 1
                try:
                    await client.put(key, value)
                except Exception:  # noqa: BLE001 - unacknowledged: not checked
                    await trio.sleep(0.2)
                    continue
                self.data[key] = value
                await trio.sleep(0.02)

    async def fault_step(self) -> None:
        c = self.c
        if self.faulted is not None:
            name, kind = self.faulted
            if kind == "pause":
                c.cluster.signal(name, signal.SIGCONT)
            else:
                c.start_process(name)
            self.faulted = None
            self.log(f"heal {name} ({kind})")
            return
        name = self.rng.choice(c.store_names())
        kind = self.rng.choice(["kill", "pause"])
        if kind == "pause":
            c.cluster.signal(name, signal.SIGSTOP)
        else:
            c.kill(name)
        self.faulted = (name, kind)
        self.log(f"{kind} {name}")

    async def op_step(self, client) -> None:
        c, rng = self.c, self.rng
        regions = await c.regions(client)
        boundaries = {d.start_key for d in regions}
        choices = ["split", "transfer", "remove", "readd"]
        if any(a.end_key == b.start_key for a, b in zip(regions, regions[1:], strict=False)):
            choices.append("merge")
        op = rng.choice(choices)
        if op == "split":
            key = b"k/%03d" % rng.randrange(1, 100)
            if key in boundaries:
                return self.log(f"split {key!r}: already a boundary")
            d = next(d for d in regions if d.contains(key))
            req = AdminRequest("split", d.region_id, split_key=key)
        elif op == "merge":
            pairs = [(a, b) for a, b in zip(regions, regions[1:], strict=False)
                     if a.end_key == b.start_key]
            a, b = rng.choice(pairs)
            d, req = a, AdminRequest("merge", a.region_id, other_region_id=b.region_id)
        elif op == "transfer":
            d = rng.choice(regions)
            req = AdminRequest("transfer_leader", d.region_id,
                               store_id=rng.choice(d.voters()).store_id)
        elif op == "remove":
            full = [d for d in regions if len(d.peers) >= 3]
            if not full:
                return self.log("remove: no region with 3 peers")
            d = rng.choice(full)
            req = AdminRequest("remove_peer", d.region_id,
                               store_id=rng.choice(d.peers).store_id)
        else:
            short = [d for d in regions if len(d.peers) < 3]
            if short:
                d = rng.choice(short)
                lacking = [s for s in self.store_ids() if d.peer_on(s) is None]
                req = AdminRequest("add_peer", d.region_id, store_id=rng.choice(lacking))
            else:  # remove a replica, then add it back on the same store at once
                d = rng.choice(regions)
                store = rng.choice(d.peers).store_id
                await self.send(client, d, AdminRequest("remove_peer", d.region_id,
                                                        store_id=store))
                d = next((x for x in await c.regions(client) if x.region_id == d.region_id),
                         d)
                req = AdminRequest("add_peer", d.region_id, store_id=store)
        await self.send(client, d, req)

    def store_ids(self) -> list[int]:
        return [int(n.split("-")[1]) for n in self.c.store_names()]

    async def send(self, client, d, req: AdminRequest) -> None:
        target = self.rng.choice(d.voters()).store_id  # a follower forwards to its leader
        what = f"{req.op} region {req.region_id} store {req.store_id or '-'}" \
               f"{' key ' + repr(req.split_key) if req.split_key else ''}" \
               f"{' with ' + str(req.other_region_id) if req.other_region_id else ''}" \
               f" via store {target}"
        try:
            with trio.fail_after(OP_TIMEOUT):
                reply = await self.c.admin(client, req, target, timeout=OP_TIMEOUT)
            self.log(f"{what}: {reply.outcome} {reply.stage} {reply.detail or ''}".rstrip())
        except Exception as exc:  # noqa: BLE001 - an operation may fail under a fault
            self.log(f"{what}: {type(exc).__name__}: {str(exc)[:120]}")


async def recovery_problems(c: Topo, client) -> list[str]:
    """What keeps the cluster from being whole (empty: recovered)."""
    problems = []
    regions = await c.regions(client)
    views = {}
    for name in c.store_names():
        body = await c.status(client, name)
        views[int(name.split("-")[1])] = {
            int(r): v for r, v in body["regions"].items() if v["initialized"]}
        if body["restart_state"].get("blocked_events", 0):
            problems.append(f"{name}: publish outbox blocked: {body['outbox']}")
    for d in regions:
        voters = [p for p in d.peers if not p.learner]
        if len(voters) != 3 or len(d.peers) != 3:
            problems.append(f"region {d.region_id}: peers {d.peers}")
            continue
        for p in d.peers:
            r = views[p.store_id].get(d.region_id)
            if r is None or r["peer_id"] != p.peer_id or \
                    r["epoch"] != [d.epoch.version, d.epoch.conf_ver]:
                problems.append(f"region {d.region_id} on store {p.store_id}: catalog "
                                f"peer {p.peer_id} at {d.epoch}, store has {r}")
        try:
            await c.leader_store(client, d.start_key, timeout=3)
        except TimeoutError:
            problems.append(f"region {d.region_id}: no leader")
    placed = {(d.region_id, p.store_id) for d in regions for p in d.peers}
    for sid, hosted in views.items():
        for rid in hosted:
            if (rid, sid) not in placed:
                problems.append(f"store {sid} hosts region {rid}, the catalog does not")
    return problems


@pytest.mark.parametrize("seed", range(FIRST, FIRST + SEEDS))
async def test_random_topology_operations_recover(topo, seed):
    c = await topo(stores=3, scheduler="replica_after=3,stuck_after=5")
    run = Run(c, seed)
    async with c.client(timeout=10) as client:
        async with trio.open_nursery() as nursery:
            for w in range(4):
                nursery.start_soon(run.writer, w)
            for _ in range(STEPS):
                if run.rng.random() < 0.35:
                    await run.fault_step()
                else:
                    await run.op_step(client)
                await trio.sleep(run.rng.uniform(0.2, 1.5))
            if run.faulted is not None:
                await run.fault_step()
            nursery.cancel_scope.cancel()
        healed = time.monotonic()
        last: list[str] = []
        while time.monotonic() - healed < RECOVERY_BOUND:
            try:
                last = await recovery_problems(c, client)
            except Exception as exc:  # noqa: BLE001 - a store may still be starting
                last = [f"{type(exc).__name__}: {exc}"]
            if not last:
                break
            await trio.sleep(0.5)
        took = time.monotonic() - healed
        steps = "\n  ".join(run.steps)
        if last:
            views = "\n".join([await diagnose(c, client, d.region_id)
                               for d in await c.regions(client)])
            pytest.fail(f"seed {seed}: not recovered {took:.1f}s after the last fault "
                        f"healed:\n  " + "\n  ".join(last) + f"\nsteps:\n  {steps}\n{views}")
        bad = await unreadable(client, run.data)
        assert bad == [], f"seed {seed}: {len(bad)} acknowledged keys unreadable " \
                          f"(first {bad[:5]})\nsteps:\n  {steps}"
    print(f"seed {seed}: {len(run.data)} keys, recovered in {took:.1f}s\n  {steps}")
