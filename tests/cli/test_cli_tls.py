"""`nokv cluster up --tls`: a local cluster whose every connection is TLS with mutual
authentication (issue 16, item 4), on its own cluster in tmp_path (not the shared one).

Later commands find the TLS files in cluster.json (`kv put/get`, `cluster status`, the Python
client); a client without TLS is refused; `--coordinator` works with `--tls-*`. Every process
is killed in `finally`.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cli_harness import Cluster, kill_leftovers, nokv, ok, one_line_error, start_cluster

import nokvpy
from nokvpy.cluster.local import LocalCluster
from nokvpy.rpc import tls as rpc_tls

pytestmark = pytest.mark.cluster


def test_cluster_up_tls_serves_over_tls_only(tmp_path):
    directory = tmp_path / "c"
    pids: dict[str, int] = {}
    spec: dict = {}
    try:
        up = start_cluster(directory, "--stores", "1", "--replication", "1", "--tls")
        cluster = Cluster(directory, up)
        pids = cluster.pids()
        spec = cluster.spec
        assert any(line.startswith("cluster up: TLS with certificates in ")
                   for line in up.stderr.splitlines())
        assert f"TLS with mutual authentication: CA and certificates in {directory / 'tls'}" \
            in up.stdout

        # cluster.json records the files; every process was started with its own certificate
        tls_dir = directory / "tls"
        assert spec["tls"] == {"dir": str(tls_dir), "ca": str(tls_dir / "ca.pem"),
                               "cert": str(tls_dir / "admin.pem"),
                               "key": str(tls_dir / "admin.key")}
        for name, pid in pids.items():
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert str(tls_dir / f"{name}.pem").encode() in argv, name
        for key in tls_dir.glob("*.key"):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, key

        # every later command takes TLS from cluster.json
        put, status = cluster.many(("kv", "put", "tls/k", "v1"), ("cluster", "status", "--json"))
        ok(put)
        body = json.loads(ok(status))
        assert body["healthy"] is True
        assert {p["name"]: p["health"] for p in body["processes"]} == {
            "metaroot-1": "up", "coordinator-1": "up", "store-1": "up"}
        assert json.loads(ok(cluster.run("kv", "get", "tls/k", "--json")))["value"] == "v1"

        # so does the Python client of the directory (the admin certificate)
        try:
            with nokvpy.connect(directory) as client:
                assert client.get(b"tls/k") == b"v1"
                client.put(b"tls/k2", b"v2")
        finally:
            rpc_tls.configure(None, cluster_id=spec["cluster_id"])

        # a client without TLS is refused; with --coordinator, --tls-* make it work
        coordinator = next(p["address"] for p in spec["processes"] if p["kind"] == "coordinator")
        env = {"NOKV_CLUSTER_ID": spec["cluster_id"], "NOKV_CLUSTER_SECRET": spec["secret"]}
        flags = ("--tls-cert", tls_dir / "admin.pem", "--tls-key", tls_dir / "admin.key",
                 "--tls-ca", tls_dir / "ca.pem")
        plain = nokv("kv", "get", "tls/k2", "--coordinator", coordinator, "--timeout", "3",
                     env=env)
        assert "closed during handshake" in one_line_error(plain, 1)
        with_flags = nokv("kv", "get", "tls/k2", "--coordinator", coordinator, *flags, env=env)
        assert ok(with_flags).strip() == "v2"
        log = (directory / "logs" / "coordinator-1.log").read_text()
        assert "refused TLS handshake from 127.0.0.1" in log

        down = ok(cluster.run("cluster", "down"))
        assert "stopped 3 process(es)" in down
        assert cluster.pids() == {}
    finally:
        kill_leftovers(directory, pids)


def test_cluster_up_tls_refuses_an_existing_plain_cluster(tmp_path):
    directory = tmp_path / "plain"
    LocalCluster(directory).create(stores=1, replication=1)  # created, never started
    result = nokv("cluster", "up", "--tls", "--dir", directory)
    line = one_line_error(result, 1)
    assert "--tls but it was created without TLS" in line
    assert not (directory / "pids").exists() and not (directory / "tls").exists()


def test_tls_flags_are_checked_while_parsing(tmp_path):
    partial = nokv("kv", "get", "k", "--coordinator", "127.0.0.1:1", "--tls-cert", "c.pem")
    assert "--tls-cert, --tls-key and --tls-ca go together (missing --tls-key, --tls-ca)" in \
        one_line_error(partial, 2)
    with_dir = nokv("kv", "get", "k", "--dir", tmp_path, "--tls-cert", "c.pem")
    assert "go with --coordinator" in one_line_error(with_dir, 2)
    missing = nokv("store", "serve", "--id", "1", "--listen", "127.0.0.1:0", "--coordinator",
                   "127.0.0.1:1", "--data", tmp_path / "s", "--tls-cert", tmp_path / "x.pem",
                   "--tls-key", tmp_path / "x.key", "--tls-ca", tmp_path / "ca.pem")
    assert "cannot load the TLS CA file" in one_line_error(missing, 1)
    assert not (tmp_path / "s").exists()
