"""Store membership on a real local cluster of its own (processes on 127.0.0.1, free ports):
`nokv cluster add-store` grows a 3-store cluster to 4; `nokv admin retire-store 1 --wait`
moves every replica off store 1, so each region ends with its replication on stores 2, 3
and 4, and STORE_RETIRED is rooted; the data still reads back; the local cluster stops the
retired store and never starts it again; its process, started anyway, refuses to rejoin and
exits. Also the refusal when too few stores would be left."""

from __future__ import annotations

import json

import pytest
from cli_harness import Cluster, kill_leftovers, nokv, ok, one_line_error, start_cluster, wait_for

from nokvpy.cluster.local import LocalCluster


def _regions(cluster: Cluster) -> list[dict]:
    return cluster.json("regions")["regions"]


def _stores(cluster: Cluster) -> dict[int, dict]:
    return {s["store_id"]: s for s in cluster.json("stores")}


@pytest.mark.slow  # about 30 s of real processes (the default run stays under 10 minutes)
def test_add_a_store_then_retire_one(tmp_path):
    directory = tmp_path / "cluster"
    cluster = Cluster(directory, None)
    try:
        cluster.up = start_cluster(directory, "--stores", "3")
        for i in range(6):
            ok(cluster.run("kv", "put", f"k{i}", f"v{i}"))
        ok(cluster.run("admin", "split", "k3", "--timeout", "20", timeout=60))
        assert len(_regions(cluster)) == 2

        # 3 stores, replication 3: nothing can be retired
        err = one_line_error(cluster.run("admin", "retire-store", "1"))
        assert "not_enough_stores" in err and "leave 2 live store(s)" in err, err

        added = cluster.json("cluster", "add-store", timeout=60)
        assert (added["name"], added["store_id"]) == ("store-4", 4)
        assert [p["name"] for p in cluster.spec["processes"] if p["kind"] == "store"] == \
            ["store-1", "store-2", "store-3", "store-4"]
        wait_for(lambda: _stores(cluster).get(4, {}).get("state") == "UP", 30,
                 "store 4 to be UP")

        result = cluster.run("admin", "retire-store", "1", "--wait", "--json",
                             "--wait-timeout", "150", timeout=180)
        if result.returncode != 0:
            logs = nokv("cluster", "logs", "--dir", directory, "--lines", "30").stdout
            raise AssertionError(f"{result.stderr}\n{cluster.run('diag', '--json').stdout}"
                                 f"\n{logs}")
        done = json.loads(result.stdout)
        assert (done["state"], done["replicas_left"]) == ("retired", 0)
        assert done["retired_index"] > 0
        again = cluster.json("admin", "retire-store", "1")  # idempotent
        assert (again["state"], again["retired_index"]) == ("retired", done["retired_index"])

        for d in _regions(cluster):
            stores = sorted(p["store_id"] for p in d["peers"])
            assert stores == [2, 3, 4], d
        assert _stores(cluster)[1]["state"] == "RETIRED"
        for i in range(6):
            assert json.loads(ok(cluster.run("kv", "get", f"k{i}", "--json")))["value"] == f"v{i}"

        assert done["stopped"] == "store-1"  # the local cluster stops it and records it
        assert [p["name"] for p in cluster.spec["processes"] if p.get("retired")] == ["store-1"]
        assert "store-1" not in cluster.pids()
        err = one_line_error(cluster.run("cluster", "restart", "store-1"))
        assert "store-1 is retired" in err, err
        rows = {r["name"]: r for r in cluster.json("cluster", "status")["processes"]}
        assert (rows["store-1"]["health"], rows["store-1"]["healthy"]) == ("retired", True)

        # the retired store's own process, started anyway, refuses to rejoin and exits
        local = LocalCluster(directory)
        spec = local.load()
        proc = spec.get("store-1")
        proc.retired = False  # in memory only: bypass the launcher's refusal
        local.start(spec, proc)
        wait_for(lambda: local.pid("store-1") is None, 30, "the retired store to exit")
        assert "store 1 is retired" in local.last_log_line("store-1")
        assert all(1 not in [p["store_id"] for p in d["peers"]] for d in _regions(cluster))
        for i in range(6):
            assert json.loads(ok(cluster.run("kv", "get", f"k{i}", "--json")))["value"] == f"v{i}"
    finally:
        pids = cluster.pids()
        try:
            nokv("cluster", "down", "--dir", directory, timeout=60)
        except Exception:  # noqa: BLE001 - the leftovers are killed below
            pass
        kill_leftovers(directory, pids)


def test_the_launcher_adds_stores_with_fresh_ids_and_ports_and_never_restarts_a_retired_one(
        tmp_path):
    import pytest

    from nokvpy.cluster.local import ClusterError

    local = LocalCluster(tmp_path / "c")
    spec = local.create(stores=3)
    first = local.add_store(spec)
    second = local.add_store(spec)
    assert (first.name, first.node_id, second.node_id) == ("store-4", 4, 5)
    addresses = [p.address for p in spec.processes] + [p.metrics_address for p in spec.processes]
    assert len(addresses) == len(set(addresses))
    assert first.data_dir == str(local.root / "data" / "store-4")
    again = local.load()
    assert [p.name for p in again.of_kind("store")] == [f"store-{i}" for i in range(1, 6)]
    assert local.retire(again, "store-2") is None  # not running: nothing to stop
    loaded = local.load()
    assert loaded.get("store-2").retired
    assert "store-2" not in [p.name for p in loaded.serving().processes]
    with pytest.raises(ClusterError, match="store-2 is retired"):
        local.start(loaded, loaded.get("store-2"))
    with pytest.raises(ClusterError, match="not a store"):
        local.retire(loaded, "coordinator-1")
    assert local.add_store(loaded).node_id == 6  # an id is never reused

    tls = LocalCluster(tmp_path / "t")
    tls_spec = tls.create(stores=3, tls=True)
    with pytest.raises(ClusterError, match="TLS"):
        tls.add_store(tls_spec)
