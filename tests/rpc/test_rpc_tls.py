"""TLS with mutual authentication on the RPC layer (issue 16, item 4), over real TCP on
127.0.0.1: the framed protocol and the HMAC role handshake run unchanged inside TLS; a peer
without a certificate of the cluster CA, or without TLS at all, is refused (counted in
`tls_handshake_failed`, logged rate-limited) and the server goes on serving; a TLS handshake
that stalls is cut by the same handshake deadline as the cluster-secret handshake.

The certificates come from `nokvpy.cluster.local.issue_tls`, as for `nokv cluster up --tls`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import stat
from datetime import timedelta
from pathlib import Path

import pytest
import trio
from rpc_helpers import CLUSTER, Add, Count, RawPeer, Sum, ident, serving

from nokvpy.cluster.local import (
    TLS_VALID_DAYS,
    ClusterSpec,
    LocalCluster,
    ProcessSpec,
    issue_tls,
)
from nokvpy.rpc import HandshakeRefusedError, RpcClient, RpcServer, RpcUnavailableError
from nokvpy.rpc import tls as rpc_tls
from nokvpy.rpc.tls import TlsConfig, TlsConfigError, TlsStream
from nokvpy.wire import Handshake, Ping, Pong

SECRET = b"tls-test-secret"
PROCS = [ProcessSpec("store-1", "store", 1, "127.0.0.1:1"),
         ProcessSpec("coordinator-1", "coordinator", 1, "127.0.0.1:2")]


def issue(directory: Path) -> dict[str, TlsConfig]:
    """A CA and certificates for store-1, coordinator-1 and admin in `directory`."""
    spec = ClusterSpec(CLUSTER, "", 1, list(PROCS))
    spec.tls = issue_tls(directory, spec)
    return {name: TlsConfig.coerce(spec.tls_files(name))
            for name in ("store-1", "coordinator-1", "admin")}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, TlsConfig]:
    return issue(tmp_path_factory.mktemp("tls") / "ours")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> dict[str, TlsConfig]:
    """Certificates of another cluster's CA."""
    return issue(tmp_path_factory.mktemp("tls") / "theirs")


def tls_server(certs, **kw) -> RpcServer:
    server = RpcServer(ident("store", 1, SECRET), tls=certs["store-1"], policy=None, **kw)

    async def on_add(req: Add, ctx) -> Sum:
        return Sum(req.a + req.b)

    async def on_count(req: Count, ctx):
        for i in range(req.n):
            yield Sum(i)

    server.register(Add, on_add)
    server.register_stream(Count, on_count)
    return server


def tls_client(config, node_id: int = 9, **kw) -> RpcClient:
    return RpcClient(ident("admin", node_id, SECRET), tls=config, **kw)


async def wait_counter(server: RpcServer, name: str, value: int) -> None:
    """Until the server's counter `name` reaches `value` (the server handles a refused
    connection in its own task, after the client already saw the refusal)."""
    with trio.fail_after(5):
        while server.counters[name] < value:
            await trio.sleep(0.01)


async def still_serves(addr: str, certs) -> None:
    async with tls_client(certs["admin"], node_id=50) as client:
        assert await client.call(addr, Add(20, 22), timeout=5) == Sum(42)


async def test_tls_server_and_client_exchange_requests(certs):
    server = tls_server(certs)
    async with serving(server) as addr, tls_client(certs["admin"]) as client:
        results = []

        async def one(i: int) -> None:
            results.append(await client.call(addr, Add(i, 1), timeout=5))

        async with trio.open_nursery() as n:
            for i in range(50):
                n.start_soon(one, i)
        assert sorted(r.total for r in results) == list(range(1, 51))
        pong = await client.call(addr, Ping(b"x" * 100_000), timeout=5)
        assert pong == Pong(b"x" * 100_000, "store-1")
        async with client.stream(addr, Count(300), timeout=5) as items:
            assert [item.total async for item in items] == list(range(300))

        # the HMAC role handshake ran inside TLS: the server proved its name and role
        peer = client.peer_of(addr)
        assert peer is not None and peer.name == "store-1"
        stream = client._conns[addr].framed.stream
        assert isinstance(stream, TlsStream) and stream.version() in ("TLSv1.2", "TLSv1.3")
        assert "store-1" in str(stream.getpeercert()["subject"])
        assert not hasattr(stream, "socket")  # no direct socket writes around the encryption
        status = server.status()
        assert status["tls"] is True
        assert status["connections"]["authenticated"] == 1
        assert server.counters["tls_handshake_failed"] == 0


async def test_a_process_certificate_serves_as_client_certificate_too(certs):
    """Processes present the same certificate when they connect to each other."""
    server = tls_server(certs)
    async with serving(server) as addr:
        client = RpcClient(ident("coordinator", 1, SECRET), tls=certs["coordinator-1"])
        async with client:
            assert await client.call(addr, Add(1, 2), timeout=5) == Sum(3)


async def test_refused_clients_leave_the_server_serving(certs, other_ca, caplog):
    caplog.set_level(logging.WARNING, logger="nokvpy.rpc")
    server = tls_server(certs)
    async with serving(server) as addr:
        host, port = addr.rsplit(":", 1)
        refused = 0

        # 1. a TLS client without a certificate: the server requires one
        ctx = ssl.create_default_context(cafile=certs["admin"].ca)
        raw = await trio.open_tcp_stream(host, int(port))
        ssl_stream = trio.SSLStream(raw, ctx, server_hostname=host)
        peer = RawPeer(ssl_stream)
        with pytest.raises(trio.BrokenResourceError):
            # TLS 1.3: the client finishes its side first; the refusal comes on first use
            await ssl_stream.do_handshake()
            await peer.send(Handshake(CLUSTER, "admin", 1, 1, os.urandom(32)))
            await peer.receive()
        await trio.aclose_forcefully(ssl_stream)
        refused += 1
        await wait_counter(server, "tls_handshake_failed", refused)
        await still_serves(addr, certs)

        # 2. a certificate signed by another CA (the client trusts our CA)
        foreign = TlsConfig(other_ca["admin"].cert, other_ca["admin"].key, certs["admin"].ca)
        async with tls_client(foreign) as client:
            with pytest.raises(RpcUnavailableError) as err:
                await client.call(addr, Add(1, 1), timeout=5)
            assert "tls" in str(err.value)
        refused += 1
        await wait_counter(server, "tls_handshake_failed", refused)
        await still_serves(addr, certs)

        # 3. a client that does not trust the server's CA refuses it by itself
        async with tls_client(other_ca["admin"]) as client:
            with pytest.raises(HandshakeRefusedError) as err:
                await client.call(addr, Add(1, 1), timeout=5)
            assert err.value.reason == "tls_handshake_failed"
            assert "certificate verify failed" in err.value.detail
            assert client.counters["tls_handshake_failed"] == 1
        refused += 1  # the server sees the client's alert
        await wait_counter(server, "tls_handshake_failed", refused)

        # 4. plain TCP: the cluster-secret handshake without TLS
        async with tls_client(False) as client:
            with pytest.raises(RpcUnavailableError) as err:
                await client.call(addr, Add(1, 1), timeout=5)
            assert "closed during handshake" in str(err.value)
        refused += 1
        await wait_counter(server, "tls_handshake_failed", refused)
        await still_serves(addr, certs)

        counters = server.counters
        assert counters["tls_handshake_failed"] == refused
        assert counters["rejected_handshake{reason=tls_handshake_failed}"] == refused
        with trio.fail_after(5):  # the last good client's connection closes
            while server.status()["connections"] != {"unauthenticated": 0, "authenticated": 0}:
                await trio.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if "refused TLS handshake" in r.getMessage()]
    assert len(lines) == 1, lines  # one line per 10 s for this reason, every event counted


async def test_tls_client_against_a_plain_server_is_refused(certs):
    server = RpcServer(ident("store", 1, SECRET), tls=False, policy=None)
    async with serving(server) as addr, tls_client(certs["admin"]) as client:
        with pytest.raises(HandshakeRefusedError) as err:
            await client.call(addr, Ping(b""), timeout=5)
        assert err.value.reason == "tls_handshake_failed"
    # the ClientHello is not a frame the server accepts before authentication
    assert server.counters["frame_too_large{phase=handshake}"] == 1


async def test_a_stalled_tls_handshake_is_cut_by_the_handshake_deadline(certs):
    server = tls_server(certs, handshake_timeout=0.5, max_unauthenticated=2)
    async with serving(server) as addr:
        silent = await RawPeer.connect(addr)  # connects, never says a word
        partial = await RawPeer.connect(addr)  # starts a TLS record and stops
        await partial.send_raw(b"\x16\x03\x01\x02\x00\x01")
        start = trio.current_time()
        with trio.fail_after(5):
            while server.status()["connections"]["unauthenticated"] < 2:
                await trio.sleep(0.01)
            assert await silent.closed_by_server()
            assert await partial.closed_by_server()
        assert 0.4 < trio.current_time() - start < 3
        assert server.counters["handshake_timeouts"] == 2
        assert server.counters["rejected_handshake{reason=timeout}"] == 2

        # stalled TLS handshakes count against max_unauthenticated: the oldest is evicted
        stalled = [await RawPeer.connect(addr) for _ in range(3)]
        with trio.fail_after(5):
            assert await stalled[0].closed_by_server()
        assert server.counters["preauth_evicted"] == 1
        await still_serves(addr, certs)
        for peer in stalled:
            await peer.aclose()
        await silent.aclose()
        await partial.aclose()


async def test_a_client_gives_up_on_a_server_that_stalls_the_tls_handshake(certs):
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted = []
    async with trio.open_nursery() as nursery:
        async def accept_and_stall() -> None:
            while True:
                accepted.append(await listeners[0].accept())

        nursery.start_soon(accept_and_stall)
        client = tls_client(certs["admin"], handshake_timeout=0.3)
        async with client:
            with trio.fail_after(5), pytest.raises(RpcUnavailableError) as err:
                await client.call(f"127.0.0.1:{port}", Ping(b""), timeout=5)
        assert "handshake timed out" in str(err.value)
        nursery.cancel_scope.cancel()
    for stream in accepted:
        await trio.aclose_forcefully(stream)
    for listener in listeners:
        await listener.aclose()


async def test_the_process_default_applies_to_its_cluster_id_only(certs):
    rpc_tls.configure(certs["store-1"], cluster_id=CLUSTER)
    try:
        assert RpcServer(ident("store", 1, SECRET)).tls == certs["store-1"]
        assert RpcServer(ident("store", 1, SECRET), tls=False).tls is None
        assert RpcClient(ident("admin", 1, SECRET, cluster="other")).tls is None
        server = RpcServer(ident("store", 1, SECRET), policy=None)
        async with serving(server) as addr:
            # a client of the cluster gets TLS by default (the store's certificate here)
            async with RpcClient(ident("admin", 1, SECRET)) as client:
                assert await client.call(addr, Ping(b"d"), timeout=5) == Pong(b"d", "store-1")
    finally:
        rpc_tls.configure(None, cluster_id=CLUSTER)
    assert rpc_tls.configured(CLUSTER) is None


def test_bad_tls_files_fail_when_the_server_or_client_is_made(certs, tmp_path):
    missing = TlsConfig(certs["admin"].cert, certs["admin"].key, str(tmp_path / "nope.pem"))
    with pytest.raises(TlsConfigError, match="nope.pem"):
        RpcServer(ident("store", 1, SECRET), tls=missing)
    wrong_key = TlsConfig(certs["admin"].cert, certs["store-1"].key, certs["admin"].ca)
    with pytest.raises(TlsConfigError, match="with key"):
        RpcClient(ident("admin", 1, SECRET), tls=wrong_key)
    with pytest.raises(TlsConfigError, match="lack key"):
        TlsConfig.coerce({"cert": "a", "ca": "c"})


def test_issued_files_keys_0600_certificates_for_127_0_0_1(tmp_path):
    from cryptography import x509

    old = os.umask(0)  # a permissive umask must not widen the key files
    try:
        configs = issue(tmp_path / "tls")
    finally:
        os.umask(old)
    directory = tmp_path / "tls"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    keys = sorted(directory.glob("*.key"))
    assert [k.stem for k in keys] == ["admin", "coordinator-1", "store-1"]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert not list(directory.glob(".*"))  # no temporary file left behind
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    for name, config in configs.items():
        cert = x509.load_pem_x509_certificate(Path(config.cert).read_bytes())
        assert cert.issuer == ca.subject
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert timedelta(days=1) < lifetime <= timedelta(days=TLS_VALID_DAYS, minutes=10), name


def test_a_tls_cluster_records_its_files_and_passes_them_to_every_process(tmp_path):
    cluster = LocalCluster(tmp_path / "c")
    spec = cluster.create(metaroots=1, coordinators=1, stores=2, replication=2, tls=True)
    try:
        loaded = cluster.load()
        assert loaded.tls == spec.tls and loaded.tls["ca"] == str(cluster.root / "tls" / "ca.pem")
        assert rpc_tls.configured(spec.cluster_id) == TlsConfig.coerce(spec.tls_files())
        for proc in spec.processes:
            argv = cluster.command(spec, proc)
            i = argv.index("--tls-cert")
            assert argv[i:i + 6] == ["--tls-cert", str(cluster.root / "tls" / f"{proc.name}.pem"),
                                     "--tls-key", str(cluster.root / "tls" / f"{proc.name}.key"),
                                     "--tls-ca", spec.tls["ca"]]
        # nothing runs: certificates that expire within the window are reissued, new CA
        before = Path(spec.tls["ca"]).read_bytes()
        assert not cluster.renew_tls(loaded)
        assert cluster.renew_tls(loaded, within=timedelta(days=TLS_VALID_DAYS + 1))
        assert Path(spec.tls["ca"]).read_bytes() != before
        for key in (cluster.root / "tls").glob("*.key"):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
        plain = LocalCluster(tmp_path / "p").create(stores=1, replication=1)
        assert plain.tls is None and "--tls-cert" not in LocalCluster(tmp_path / "p").command(
            plain, plain.processes[0])
    finally:
        rpc_tls.configure(None, cluster_id=spec.cluster_id)
