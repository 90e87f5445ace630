"""`nokv cluster up --host ADDR` and `nokv cluster logs -f`, below the command line: the
addresses a new cluster directory records, the refusals (a wildcard, an address this machine
does not have) and following logs as they grow. No process is started here (the three-host
test in test_multihost.py and the CLI suite start real ones)."""

from __future__ import annotations

import json

import pytest

from nokvpy.cli import cluster_cmd
from nokvpy.cluster.local import ClusterError, LocalCluster


def test_a_cluster_on_another_address_records_it_for_every_process_and_port(tmp_path):
    cluster = LocalCluster(tmp_path / "c")
    spec = cluster.create(stores=3, host="127.0.0.2")
    assert spec.host == "127.0.0.2"
    addresses = [p.address for p in spec.processes] + [p.metrics_address for p in spec.processes]
    assert all(a.startswith("127.0.0.2:") for a in addresses), addresses
    assert len(set(addresses)) == len(addresses)
    store = cluster.add_store(cluster.load())
    assert store.address.startswith("127.0.0.2:") and store.metrics_address.startswith("127.0.0.2:")
    assert cluster.load().host == "127.0.0.2"


def test_an_older_cluster_file_without_a_host_is_on_loopback(tmp_path):
    cluster = LocalCluster(tmp_path / "c")
    cluster.create(stores=1, replication=1)
    raw = json.loads(cluster.spec_path.read_text())
    del raw["host"]
    cluster.spec_path.write_text(json.dumps(raw))
    assert cluster.load().host == "127.0.0.1"


@pytest.mark.parametrize("host, says", [
    ("0.0.0.0", "not a wildcard"), ("*", "not a wildcard"), ("::", "not a wildcard"),
    ("", "needs an address"), ("192.0.2.77", "cannot listen on 192.0.2.77"),
])
def test_a_host_processes_could_not_be_reached_at_is_refused_and_nothing_is_written(
        tmp_path, host, says):
    cluster = LocalCluster(tmp_path / "c")
    with pytest.raises(ClusterError, match=says):
        cluster.create(host=host)
    assert not (tmp_path / "c").exists()


def test_follow_prints_each_complete_line_as_it_is_appended(tmp_path, capsys, monkeypatch):
    cluster = LocalCluster(tmp_path / "c")
    (cluster.root / "logs").mkdir(parents=True)
    one, two = cluster.log_path("store-1"), cluster.log_path("store-2")
    one.write_text("old\n")
    two.write_text("")
    offsets = {"store-1": one.stat().st_size, "store-2": 0}
    writes = iter([
        lambda: one.write_text("old\nfirst\nhalf"),  # a line and half of the next
        lambda: two.write_text("two says\n"),
        lambda: one.write_text("old\nfirst\nhalf done\n"),
        lambda: one.write_text("new file\n"),  # replaced by a shorter file: from its start
    ])
    monkeypatch.setattr(cluster_cmd.time, "sleep", lambda _s: next(writes, lambda: None)())
    cluster_cmd.follow(cluster, ["store-1", "store-2"], offsets, prefix=True, rounds=6)
    assert capsys.readouterr().out.splitlines() == [
        "store-1 | first", "store-2 | two says", "store-1 | half done", "store-1 | new file"]
