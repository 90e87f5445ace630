"""`nokv demo`: a narrated tour of a local cluster and of why its contracts matter.

Owns: the script of the tour. Starts a cluster in a temporary directory (or `--dir`), and
always stops its processes (unless `--keep`), even when a step fails. A temporary directory
is deleted only after a demo that succeeded: after a failure it stays, and the last lines say
where the logs are. Exit status 0 only when every step did what it narrates. Every step waits
for what it needs (a restarted store serving again) instead of assuming it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import trio

from nokvpy.cli.cluster_cmd import exited_message
from nokvpy.cli.common import CliError
from nokvpy.cli.output import show_key
from nokvpy.client import Client, RouteRejectedError
from nokvpy.client.admin import wait_cluster_ready
from nokvpy.cluster.local import LocalCluster
from nokvpy.protocol import Freshness
from nokvpy.protocol.admin import FailpointClearRequest, FailpointSetRequest
from nokvpy.protocol.coordinator_rpc import PauseCatchUpRequest
from nokvpy.protocol.store_rpc import AdminRequest, ExecutionStatusRequest

STEP = 0


def say(text: str) -> None:
    print(text, flush=True)


def step(title: str) -> None:
    global STEP
    STEP += 1
    say(f"\n== {STEP}. {title}")


def witness_line(w) -> str:
    return (f"served token {w.served_root_token.index}, current {w.current_root_token.index}, "
            f"lag {w.root_lag}, {w.serving_class.name}, catch-up {w.catch_up_state.name}, "
            f"mode {w.degraded_mode.name}")


def run(args) -> int:
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="nokv-demo-"))
    cluster = LocalCluster(root)
    started = time.monotonic()
    ok = False
    try:
        step(f"start a local cluster in {root}: 1 metaroot, 1 coordinator, 3 stores")
        spec = cluster.load() if cluster.exists() else cluster.create(stores=3, replication=3)
        for proc in spec.processes:
            pid = cluster.start(spec, proc)
            say(f"   {proc.name:<14} pid {pid:<7} {proc.address}")
        def check() -> None:  # a process that died while starting: say so at once
            for proc in spec.processes:
                if cluster.pid(proc.name) is None:
                    raise CliError(exited_message(cluster, proc.name))

        wait_cluster_ready(spec, timeout=90.0, on_progress=lambda s: None, check=check)
        say("   the cluster is serving: metaroot elected, grants held, first region replicated")
        trio.run(tour, cluster, spec)
        say(f"\ndemo finished in {time.monotonic() - started:.1f}s")
        ok = True
        return 0
    finally:
        if not args.keep:
            if cluster.exists():
                stopped = cluster.stop_all(cluster.load())
                say(f"\nstopped {len(stopped)} processes")
            if not args.dir and ok:
                shutil.rmtree(root, ignore_errors=True)
            elif not ok:
                say(f"the demo failed: data and process logs are kept in {root} "
                    f"(remove it with `rm -r {root}`)")
        else:
            say(f"\ncluster left running in {root} (stop it with `nokv cluster down --dir {root}`)")


async def tour(cluster: LocalCluster, spec) -> None:
    coord = spec.coordinator_addrs()[0]
    async with Client(spec.coordinator_addrs(), cluster_id=spec.cluster_id,
                      secret=spec.secret.encode(), timeout=15.0, role="admin") as client:
        step("write and read keys (linearizable reads through ReadIndex on the region leader)")
        for i in range(10):
            await client.put(b"user/%02d" % i, b"value-%d" % i)
        got = await client.get(b"user/03")
        say(f"   put user/00..user/09; get user/03 -> {show_key(got or b'')}")
        if got != b"value-3":
            raise CliError(f"read returned {got!r}, expected b'value-3'")
        ok, _ = await client.compare_and_swap(b"user/03", b"value-3", b"swapped")
        say(f"   compare-and-swap user/03 value-3 -> swapped: {'succeeded' if ok else 'FAILED'}")

        step("route reads at each freshness, each with its witness")
        for fresh in (Freshness.STRONG, Freshness.BOUNDED, Freshness.BEST_EFFORT):
            reply = await client.route(b"user/05", fresh, max_root_lag=0 if fresh == Freshness.BOUNDED else None)
            d = reply.descriptor
            say(f"   {fresh.name:<11} region {d.region_id} epoch {d.epoch}: {witness_line(reply.witness)}")

        step("pause the coordinator's catch-up, change root truth, and ask again")
        await client.rpc.call(coord, PauseCatchUpRequest(True), timeout=5.0)
        await client.put(b"user/99", b"x")  # data writes do not change root truth...
        moved = await split_region(client, b"user/05")  # ...a split does
        say(f"   split at user/05 published to metaroot (transition {moved}) while the "
            "coordinator is paused")
        try:
            await client.route(b"user/05", Freshness.BOUNDED, max_root_lag=0)
            raise CliError("a BOUNDED read with max_root_lag=0 was served by a lagging coordinator")
        except RouteRejectedError as exc:
            say(f"   BOUNDED (max lag 0) -> rejected: {exc.reason} ({witness_line(exc.witness)})")
        reply = await client.route(b"user/05", Freshness.BEST_EFFORT)
        say(f"   BEST_EFFORT -> served, labelled {reply.witness.serving_class.name} "
            f"(lag {reply.witness.root_lag}): region {reply.descriptor.region_id}, the old view")
        await client.rpc.call(coord, PauseCatchUpRequest(False), timeout=5.0)
        reply = await wait_route(client, b"user/05",
                                 lambda r: r.witness.root_lag == 0 and r.leader_store_id)
        d = reply.descriptor
        say(f"   resumed: STRONG -> region {d.region_id} [{show_key(d.start_key)}, "
            f"{show_key(d.end_key) or '+inf'}) {witness_line(reply.witness)}")

        step("kill -9 the leader store of user/05 and keep serving")
        leader = reply.leader_store_id
        victim = f"store-{leader}"
        cluster.kill(victim)
        say(f"   killed {victim}")
        t0 = time.monotonic()
        # let the client see its pooled connection to the dead store close: a write sent on it
        # first would have an unknown outcome (and is, rightly, not retried)
        await trio.sleep(0.5)
        await client.put(b"user/05", b"after-failover")
        got = await client.get(b"user/05")
        say(f"   put+get user/05 after failover -> {show_key(got or b'')} "
            f"({time.monotonic() - t0:.1f}s, including a new election)")
        if got != b"after-failover":
            raise CliError("write after failover was not readable")
        cluster.start(spec, spec.get(victim))
        state = await wait_store_serving(client, spec.get(victim).address)
        say(f"   restarted {victim}: it rebuilt its regions from its own localmeta "
            f"(restart state {state})")

        step("inject a terminal-publish failure and watch it recover")
        target = await client.route(b"user/08", Freshness.STRONG)
        store = spec.get(f"store-{target.leader_store_id}")
        await client.rpc.call(store.address, FailpointSetRequest("store.publish_terminal", "raise"),
                              timeout=5.0)
        tid = await split_region(client, b"user/08", wait=False)
        status = await wait_stage(client, store.address, tid, {"TERMINAL_FAILED", "TERMINAL_PENDING"})
        say(f"   split {tid} applied; terminal publish fails -> {status['stage']} "
            f"(last error: {status.get('last_error', '-')})")
        await client.rpc.call(store.address, FailpointClearRequest("store.publish_terminal"), timeout=5.0)
        status = await wait_stage(client, store.address, tid, {"TERMINAL_PUBLISHED"})
        say(f"   failpoint cleared -> {status['stage']}: root truth caught up with the store")


async def split_region(client: Client, key: bytes, wait: bool = True) -> str:
    route = await client.route(key, Freshness.STRONG)
    d = route.descriptor
    addr = await client._store_addr(route.leader_store_id)
    reply = await client.rpc.call(addr, AdminRequest("split", d.region_id, split_key=key, wait=wait),
                                  timeout=30.0)
    return reply.transition_id


async def wait_route(client: Client, key: bytes, predicate, timeout: float = 20.0):
    with trio.fail_after(timeout):
        while True:
            try:
                reply = await client.route(key, Freshness.STRONG)
                if predicate(reply):
                    return reply
            except RouteRejectedError:
                pass
            await trio.sleep(0.1)


async def wait_store_serving(client: Client, addr: str, timeout: float = 30.0) -> str:
    """Wait until the store at `addr` answers ExecutionStatus and hosts its regions again
    (its restart state re-derived from localmeta is no longer FATAL); returns that state."""
    last = "not answering"
    try:
        with trio.fail_after(timeout):
            while True:
                try:
                    body = (await client.rpc.call(addr, ExecutionStatusRequest(0, ""),
                                                  timeout=2.0)).body
                except Exception as exc:  # not listening yet: keep waiting
                    last = f"not answering ({type(exc).__name__})"
                else:
                    state = (body.get("current_state") or {}).get("state") or "READY"
                    last = f"restart state {state}, {len(body.get('regions') or ())} regions"
                    if state != "FATAL" and body.get("regions"):
                        return str(state)
                await trio.sleep(0.1)
    except trio.TooSlowError:
        raise CliError(f"the restarted store at {addr} did not serve within {timeout:.0f}s "
                       f"(last seen: {last})") from None


async def wait_stage(client: Client, addr: str, tid: str, stages: set[str], timeout: float = 30.0) -> dict:
    with trio.fail_after(timeout):
        while True:
            body = (await client.rpc.call(addr, ExecutionStatusRequest(0, tid), timeout=5.0)).body
            tracked = body.get("transitions", {}).get(tid)
            if tracked and tracked.get("stage") in stages:
                return tracked
            await trio.sleep(0.1)
