"""Roles (issue 16, items 1 and 2): every connection proves one role's credential; each RPC
names the roles that may call it; failpoints and fault rules also need --enable-failpoints.

- policy: every request type a process registers (parsed from the source) is in
  `nokvpy.protocol.roles.POLICY`, so nothing is allowed by default;
- handshake: a client holding only the `client` credential cannot claim another role (or a
  name such as store-2), and an unknown role is refused;
- dispatch, in-process on real TCP: each role either reaches the handler or gets a typed
  `permission_denied` naming its role and the RPC, and nothing changes;
- real processes (a local cluster on loopback, every process killed by pid in `finally`,
  files under tmp_path): with a client credential, failpoint set, fault rules, metaroot Append,
  grant issue and raft batches are refused; with the admin credential, a metaroot started
  without --enable-failpoints refuses failpoints too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from nokvpy import failpoints
from nokvpy.protocol import roles
from nokvpy.protocol.admin import FailpointListRequest, FailpointSetRequest
from nokvpy.protocol.grants import GrantCommand, GrantCommandKind
from nokvpy.protocol.metaroot_rpc import AppendRequest, GrantRequest, MetarootStatusRequest
from nokvpy.protocol.store_rpc import ExecutionStatusRequest
from nokvpy.rpc import RemoteError, RpcClient, RpcServer
from nokvpy.rpc.errors import HandshakeRefusedError
from nokvpy.rpc.identity import ROLES, Identity, role_key
from nokvpy.rpc.ports import free_ports
from nokvpy.wire import Ping, Pong, SetFaultRules
from nokvpy.wire.raft_msgs import RaftBatch

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"roles-test-secret"
SOURCES = ["metaroot", "coordinator", "raftstore", "nokvpy"]


def registered_types() -> set[str]:
    found = set()
    for top in SOURCES:
        for path in (ROOT / top).rglob("*.py"):
            text = path.read_text()
            found |= set(re.findall(r"\.register(?:_stream)?\(\s*([A-Z]\w+)\s*,", text))
    return found


def test_every_registered_request_type_has_a_policy():
    types = registered_types()
    assert {"AppendRequest", "PutRequest", "RaftBatch", "FailpointSetRequest"} <= types, types
    missing = sorted(t for t in types - {"Add", "Get"} if t not in roles.POLICY)
    assert missing == [], f"request types without roles in nokvpy/protocol/roles.py: {missing}"


def test_unknown_types_and_kinds_are_refused_by_the_policy():
    assert not roles.allowed("store", "admin", "NoSuchRequest")
    assert not roles.allowed("coordinator", "store", "RaftBatch")  # served by stores only
    assert roles.allowed("store", "store", "RaftBatch")
    assert roles.allowed("metaroot", "metaroot", "RaftBatch")
    assert not roles.allowed("metaroot", "store", "RaftBatch")


# ---- handshake and dispatch in-process (real TCP) -------------------------------------


async def serve(nursery, server: RpcServer) -> str:
    (port,) = free_ports(1)
    await nursery.start(server.serve, "127.0.0.1", port)
    return f"127.0.0.1:{port}"


def metaroot_like(**kw) -> RpcServer:
    server = RpcServer(Identity("c", "metaroot", 1, SECRET), **kw)
    hits = []

    async def on_append(req, ctx):
        hits.append(ctx.peer.node_kind)
        return Pong(b"appended", "metaroot-1")

    server.register(AppendRequest, on_append)
    server.hits = hits  # type: ignore[attr-defined]
    return server


@pytest.mark.parametrize("role", ROLES)
async def test_each_role_reaches_only_what_its_policy_allows(role):
    server = metaroot_like()
    async with trio.open_nursery() as nursery:
        addr = await serve(nursery, server)
        async with RpcClient(Identity("c", role, 7, credential=role_key(SECRET, role))) as rpc:
            with trio.fail_after(10):
                assert (await rpc.call(addr, Ping(b"x"), 5)).payload == b"x"  # anyone
                if role == "coordinator":
                    await rpc.call(addr, AppendRequest([]), 5)
                else:
                    with pytest.raises(RemoteError) as exc:
                        await rpc.call(addr, AppendRequest([]), 5)
                    e = exc.value
                    assert (e.kind, e.reason) == ("permission_denied", "permission_denied")
                    assert e.details == {"role": role, "rpc": "AppendRequest"}
        nursery.cancel_scope.cancel()
    assert server.hits == (["coordinator"] if role == "coordinator" else [])
    denied = sum(v for k, v in server.counters.items() if k.startswith("permission_denied"))
    assert denied == (0 if role == "coordinator" else 1)


@pytest.mark.parametrize("claimed", ["store", "admin", "coordinator"])
async def test_a_client_credential_cannot_claim_another_role(claimed):
    server = metaroot_like()
    async with trio.open_nursery() as nursery:
        addr = await serve(nursery, server)
        me = Identity("c", claimed, 2, credential=role_key(SECRET, "client"))
        async with RpcClient(me, backoff_max=0.05) as rpc:
            with trio.fail_after(10), pytest.raises(HandshakeRefusedError) as exc:
                await rpc.call(addr, Ping(b"x"), 5)
        assert "bad_hmac" in str(exc.value)
        nursery.cancel_scope.cancel()


async def test_an_unknown_role_is_refused():
    server = metaroot_like()
    async with trio.open_nursery() as nursery:
        addr = await serve(nursery, server)
        async with RpcClient(Identity("c", "jepsen", 0, SECRET), backoff_max=0.05) as rpc:
            with trio.fail_after(10), pytest.raises(HandshakeRefusedError) as exc:
                await rpc.call(addr, Ping(b"x"), 5)
        assert "unknown_role" in str(exc.value)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("enabled", [True, False])
async def test_fault_rpcs_need_admin_and_enabled_failpoints(enabled):
    from nokvpy.adminsvc import register_failpoint_admin

    server = RpcServer(Identity("c", "store", 1, SECRET), enable_failpoints=enabled)
    register_failpoint_admin(server)
    before = failpoints.list_active()
    async with trio.open_nursery() as nursery:
        addr = await serve(nursery, server)
        for role in ROLES:
            async with RpcClient(Identity("c", role, 3, SECRET)) as rpc:
                for req in (FailpointSetRequest("store.before_apply", "off"), SetFaultRules()):
                    with trio.fail_after(10):
                        if role == "admin" and enabled:
                            await rpc.call(addr, req, 5)
                            continue
                        with pytest.raises(RemoteError) as exc:
                            await rpc.call(addr, req, 5)
                        want = "failpoints_disabled" if not enabled else "permission_denied"
                        assert exc.value.reason == want, (role, req, exc.value)
                    await rpc.call(addr, FailpointListRequest(), 5)  # reading is fine
        nursery.cancel_scope.cancel()
    failpoints.clear("store.before_apply")
    assert failpoints.list_active() == before


# ---- real processes ---------------------------------------------------------------------


@pytest.mark.cluster
async def test_a_client_credential_is_refused_everything_privileged(local_cluster):
    c = local_cluster
    key = role_key(c.spec.secret.encode(), "client")
    store = c.addr("store-1")
    meta = c.spec.of_kind("metaroot")[0].address
    async with RpcClient(Identity(c.spec.cluster_id, "client", 5, credential=key)) as rpc:
        attempts = [
            (store, FailpointSetRequest("store.before_apply", "exit")),
            (store, SetFaultRules(0, ())),
            (meta, AppendRequest([])),
            (meta, GrantRequest(GrantCommand(GrantCommandKind.SEAL, "coordinator-1#x"))),
            (store, RaftBatch(2, 1, [])),
        ]
        for addr, req in attempts:
            with trio.fail_after(10), pytest.raises(RemoteError) as exc:
                await rpc.call(addr, req, 5)
            assert exc.value.kind == "permission_denied", (req, exc.value)
        # what a client may do still works
        await rpc.call(meta, MetarootStatusRequest(), 5)
        body = (await rpc.call(store, ExecutionStatusRequest(), 5)).body
        assert body["store_id"] == 1
    async with c.client() as client:  # the store did not exit, the cluster serves
        await client.put(b"roles", b"ok")
        assert await client.get(b"roles") == b"ok"


@pytest.mark.cluster
async def test_admin_is_refused_failpoints_without_enable_failpoints(tmp_path):
    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"
    env = dict(os.environ, NOKV_CLUSTER_SECRET=SECRET.decode(),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(tmp_path / "metaroot.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "nokvpy.cli.main", "metaroot", "serve", "--id", "1",
         "--listen", addr, "--cluster-id", "c", "--data", str(tmp_path / "m1")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        async with RpcClient(Identity("c", "admin", 1, SECRET), backoff_max=0.1) as rpc:
            with trio.fail_after(30):
                while True:
                    try:
                        await rpc.call(addr, Ping(b""), 2)
                        break
                    except Exception:  # noqa: BLE001 - still starting
                        await trio.sleep(0.1)
                with pytest.raises(RemoteError) as exc:
                    await rpc.call(addr, FailpointSetRequest("store.before_apply", "exit"), 5)
                assert exc.value.reason == "failpoints_disabled", exc.value
                with pytest.raises(RemoteError) as exc:
                    await rpc.call(addr, SetFaultRules(0, ()), 5)
                assert exc.value.reason == "failpoints_disabled"
                listed = await rpc.call(addr, FailpointListRequest(), 5)
                assert listed.active == {}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        log.close()


def test_a_raft_batch_must_name_its_proven_sender():
    from types import SimpleNamespace

    from nokvpy.replication.transport import impersonated
    from nokvpy.rpc.identity import PeerIdentity

    def ctx(secret, node_id):
        return SimpleNamespace(server=SimpleNamespace(identity=Identity("c", "store", 1, secret)),
                               peer=PeerIdentity("c", "store", node_id))

    assert impersonated(RaftBatch(2, 1, []), ctx(SECRET, 3))  # store-3 sending as store 2
    assert not impersonated(RaftBatch(3, 1, []), ctx(SECRET, 3))
    assert not impersonated(RaftBatch(2, 1, []), ctx(None, 3))  # nothing proven: not judged
