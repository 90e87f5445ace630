"""Operator calls against a cluster's processes: health probes, readiness, admin requests.

Owns: finding each process's role and health by asking it (metaroot status, coordinator
diagnostics, store execution status) and waiting until a fresh local cluster serves. Never
starts or stops processes (nokvpy.cluster does).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from nokvpy.protocol.coordinator_rpc import DiagnosticsRequest, ListStoresRequest
from nokvpy.protocol.metaroot_rpc import MetarootStatusRequest
from nokvpy.protocol.store_rpc import ExecutionStatusRequest
from nokvpy.rpc import Identity, RemoteError, RpcClient, RpcTimeoutError, RpcUnavailableError


def identity_for(spec, role: str = "admin") -> Identity:
    """The identity of a local operator of the cluster `spec` (it holds the secret)."""
    return Identity(spec.cluster_id, role, 0, spec.secret.encode() if spec.secret else None)


async def probe_one(rpc: RpcClient, proc, timeout: float) -> dict[str, Any]:
    try:
        if proc.kind == "metaroot":
            st = await rpc.call(proc.address, MetarootStatusRequest(), timeout=timeout)
            role = "leader" if st.is_leader else f"follower (leader {st.leader_id or '?'})"
            return {"role": role, "health": "up", "token": st.committed_token.index}
        if proc.kind == "coordinator":
            diag = (await rpc.call(proc.address, DiagnosticsRequest(), timeout=timeout)).body
            grants = diag.get("grants_held") or []
            role = ("grant holder: " + ",".join(grants)) if grants else "standby"
            mode = diag.get("degraded_mode", "?")
            return {"role": role, "health": "up" if mode == "HEALTHY" else f"up ({mode.lower()})",
                    "diag": diag}
        st = (await rpc.call(proc.address, ExecutionStatusRequest(), timeout=timeout)).body
        regions, leaders = st.get("region_count", 0), st.get("leader_count", 0)
        restart = st.get("restart_state", {}).get("state", "?")
        return {"role": f"{regions} region{'' if regions == 1 else 's'}, "
                        f"{leaders} leader{'' if leaders == 1 else 's'}",
                "health": "up" if restart == "READY" else f"up ({restart.lower()})", "status": st}
    except Exception as exc:  # noqa: BLE001 - a probe reports, never raises
        return {"health": f"unreachable ({type(exc).__name__})"}


def probe_processes(spec, timeout: float = 1.5, pids: dict[str, int | None] | None = None) -> dict[str, dict]:
    async def main() -> dict[str, dict]:
        rpc = RpcClient(identity_for(spec))
        out: dict[str, dict] = {}
        try:
            async with trio.open_nursery() as n:
                for proc in spec.processes:
                    if pids is not None and pids.get(proc.name) is None:
                        out[proc.name] = {"health": "down"}
                        continue

                    async def one(p=proc) -> None:
                        out[p.name] = await probe_one(rpc, p, timeout)

                    n.start_soon(one)
        finally:
            await rpc.aclose()
        return out

    return trio.run(main)


def wait_cluster_ready(spec, timeout: float, on_progress: Callable[[str], None] | None = None,
                       check: Callable[[], None] | None = None) -> None:
    """Wait until metaroot has a leader, a coordinator holds its grants and serves a BOUNDED
    route for the empty key, and every store reports in.

    `on_progress` receives a short description of what is awaited whenever it is polled;
    `check` is called on every poll and may raise to give up early (a process died)."""
    deadline = time.monotonic() + timeout

    async def main() -> None:
        from nokvpy.protocol import Freshness
        from nokvpy.protocol.coordinator_rpc import GetRegionByKeyRequest

        rpc = RpcClient(identity_for(spec))
        names = {p.address: p.name for p in spec.processes}
        last = "starting"
        try:
            while time.monotonic() < deadline:
                if check is not None:
                    check()
                for addr in spec.coordinator_addrs():
                    try:
                        stores = await rpc.call(addr, ListStoresRequest(), timeout=1.0)
                        up = [s for s in stores.stores if s.state.name == "UP"]
                        want = len(spec.of_kind("store"))
                        if len(up) < want:
                            last = f"{len(up)}/{want} stores up"
                            break
                        reply = await rpc.call(addr, GetRegionByKeyRequest(b"", Freshness.BOUNDED, None, 0),
                                               timeout=1.0)
                        if reply.descriptor is not None and reply.leader_store_id:
                            return
                        last = ("waiting for the first region" if reply.descriptor is None
                                else f"waiting for region {reply.descriptor.region_id} to elect a leader")
                        break
                    except RpcUnavailableError:
                        last = f"waiting for {names.get(addr, addr)} ({addr}) to accept connections"
                    except RpcTimeoutError:
                        last = f"waiting for {names.get(addr, addr)} ({addr}) to answer"
                    except RemoteError as exc:
                        last = f"{names.get(addr, addr)} not serving yet ({exc.reason or exc.kind})"
                    except Exception as exc:  # noqa: BLE001 - still starting
                        last = f"{type(exc).__name__}: {exc}"[:120]
                if on_progress:
                    on_progress(last)
                await trio.sleep(0.25)
            raise TimeoutError(last)
        finally:
            await rpc.aclose()

    trio.run(main)


def call(spec_or_addr_identity: Identity, addr: str, request: Any, timeout: float = 10.0) -> Any:
    async def main() -> Any:
        rpc = RpcClient(spec_or_addr_identity)
        try:
            return await rpc.call(addr, request, timeout=timeout)
        finally:
            await rpc.aclose()

    return trio.run(main)
