"""Every process serves Prometheus metrics (`--metrics-addr`), on the shared local cluster of
the CLI tests (tests/cli/conftest.py): each process has a metrics port in cluster.json, `nokv
cluster status` shows its URL, the endpoints of a store, the coordinator and metaroot answer
over real TCP with the families the docs promise (parsed here by a small parser of this
test, independent of nokvpy.metrics), and `nokv metrics NAME` prints them. A cluster.json
written before metrics still loads."""

from __future__ import annotations

import json
import re
import urllib.request

from cli_harness import nokv, ok, one_line_error, parsed, wait_for

from nokvpy.cluster.local import LocalCluster

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> tuple[dict[str, str], dict[str, list[tuple[dict[str, str], float]]]]:
    """(family -> type, sample name -> [(labels, value)]) of Prometheus text."""
    types: dict[str, str] = {}
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line and not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, line
            name, labels, value = match.groups()
            samples.setdefault(name, []).append(
                (dict(LABEL.findall(labels or "")), float(value)))
    return types, samples


def scrape(address: str) -> tuple[dict[str, str], dict[str, list]]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parse(reply.read().decode())


def value(samples: dict, name: str, **labels: str) -> float:
    found = [v for lbl, v in samples.get(name, [])
             if all(lbl.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_every_process_serves_its_families(cluster):
    procs = {p["name"]: p for p in cluster.spec["processes"]}
    addresses = {n: p["metrics_address"] for n, p in procs.items()}
    assert all(a.startswith("127.0.0.1:") for a in addresses.values())
    assert len(set(addresses.values()) | {p["address"] for p in procs.values()}) == 2 * len(procs)
    ok(cluster.run("kv", "put", "metrics/key", "v", "--timeout", "10"))
    stores = sorted(n for n, p in procs.items() if p["kind"] == "store")

    for name, proc in procs.items():
        types, samples = scrape(addresses[name])
        (info,) = samples["nokv_process_info"]
        assert info[0]["kind"] == proc["kind"] and info[0]["id"] == str(proc["node_id"])
        assert info[0]["version"] and info[1] == 1
        assert types["nokv_process_cpu_seconds_total"] == "counter"
        assert value(samples, "nokv_process_cpu_seconds_total") > 0
        assert value(samples, "nokv_rpc_requests_total") > 0
        assert types["nokv_metrics_scrape_duration_seconds"] == "histogram"
        assert types["nokv_counter_total"] == "counter"

    # stores: region 1 is led by exactly one store, its applied index moved past the put
    def region_one() -> dict | None:
        seen = {n: scrape(addresses[n])[1] for n in stores}
        hosting = {n: s for n, s in seen.items()  # every store, unless a test moved a replica
                   if any(lbl.get("region") == "1" for lbl, _ in s["nokv_raft_leader"])}
        leaders = [n for n, s in hosting.items()
                   if value(s, "nokv_raft_leader", region="1") == 1]
        applied = sum(v for s in seen.values() for lbl, v in s["nokv_outcomes_total"]
                      if lbl["outcome"] == "APPLIED")
        return seen if len(leaders) == 1 and applied >= 1 else None

    seen = wait_for(region_one, 20, "exactly one store to lead region 1")
    for samples in seen.values():
        if not any(lbl.get("region") == "1" for lbl, _ in samples["nokv_raft_leader"]):
            continue
        assert value(samples, "nokv_store_regions") >= 1
        assert value(samples, "nokv_raft_applied_index", region="1") > 0
        assert value(samples, "nokv_raft_commit_index", region="1") >= \
            value(samples, "nokv_raft_applied_index", region="1")
        assert value(samples, "nokv_raft_term", region="1") >= 1
        assert value(samples, "nokv_storage_fsyncs_total", engine="lmdb") > 0
        assert value(samples, "nokv_storage_fsyncs_total", engine="wal") > 0
        assert value(samples, "nokv_wal_bytes_total") > 0
        assert value(samples, "nokv_publish_outbox_backlog") >= 0
        assert value(samples, "nokv_publish_blocked_events") == 0
    assert sum(value(s, "nokv_store_leaders") for s in seen.values()) >= 1
    writes = [v for s in seen.values() for lbl, v in s.get("nokv_admissions_total", [])
              if lbl == {"class": "WRITE", "reason": "ACCEPTED"}]
    assert sum(writes) >= 1

    # the coordinator: one catch-up state, root lag, the grants it holds
    def coordinator() -> dict | None:
        s = scrape(addresses["coordinator-1"])[1]
        held = [lbl["duty"] for lbl, v in s["nokv_coordinator_grant_held"] if v == 1]
        return s if held else None

    samples = wait_for(coordinator, 20, "the coordinator to hold a grant")
    (state,) = samples["nokv_coordinator_catch_up_state"]
    assert state[0]["state"] and state[1] == 1
    assert value(samples, "nokv_coordinator_root_lag") >= 0
    assert value(samples, "nokv_coordinator_stores") == len(stores)
    assert value(samples, "nokv_coordinator_root_reachable") == 1
    assert {lbl["duty"] for lbl, _ in samples["nokv_coordinator_grant_held"]} >= {"tso"}

    # metaroot: the single peer leads; term, commit and applied index
    samples = scrape(addresses["metaroot-1"])[1]
    assert value(samples, "nokv_raft_leader") == 1
    assert value(samples, "nokv_raft_term") >= 1
    assert value(samples, "nokv_raft_commit_index") >= value(samples, "nokv_raft_applied_index") > 0
    assert value(samples, "nokv_metaroot_root_index") > 0


def test_status_shows_metrics_urls_and_nokv_metrics_prints_them(cluster):
    status_json, status, text, as_json, missing = cluster.many(
        ("cluster", "status", "--json"), ("cluster", "status"), ("metrics", "store-2"),
        ("metrics", "coordinator-1", "--json"), ("metrics", "store-9"))
    assert status_json.returncode in (0, 3), status_json.stderr
    spec = {p["name"]: p for p in cluster.spec["processes"]}
    rows = json.loads(status_json.stdout)["processes"]
    assert {r["name"]: r["metrics"] for r in rows} == {
        n: f"http://{p['metrics_address']}/metrics" for n, p in spec.items()}
    lines = status.stdout.splitlines()
    assert lines[0].split()[-1] == "METRICS"
    assert all(line.split()[-1].startswith("http://127.0.0.1:") for line in lines[1:len(spec) + 1])

    _, samples = parse(ok(text))
    assert samples["nokv_process_info"][0][0]["kind"] == "store"
    body = parsed(as_json)
    assert body["process"] == "coordinator-1"
    assert body["address"] == spec["coordinator-1"]["metrics_address"]
    families = {f["name"]: f for f in body["families"]}
    assert families["nokv_coordinator_root_lag"]["type"] == "gauge"
    assert families["nokv_process_info"]["samples"][0]["labels"]["kind"] == "coordinator"
    assert "store-9" in one_line_error(missing, 1)


def test_a_cluster_file_without_metrics_addresses_still_loads(tmp_path):
    """A cluster.json from before metrics: it loads, its processes start without the flag,
    `nokv metrics` says why there is nothing, and `cluster up` of the stopped cluster gives
    every process a port (checked without starting one)."""
    old = {"cluster_id": "nokv-old", "secret": "s", "replication": 1, "tls": None,
           "processes": [{"name": "store-1", "kind": "store", "node_id": 1,
                          "address": "127.0.0.1:1", "data_dir": str(tmp_path / "d"),
                          "extra_args": []},
                         {"name": "coordinator-1", "kind": "coordinator", "node_id": 1,
                          "address": "127.0.0.1:2", "data_dir": "", "extra_args": []}]}
    (tmp_path / "cluster.json").write_text(json.dumps(old))
    cluster = LocalCluster(tmp_path)
    spec = cluster.load()
    store = spec.get("store-1")
    assert store.metrics_address == "" and store.metrics_url == ""
    assert "--metrics-addr" not in cluster.command(spec, store)

    result = nokv("metrics", "store-1", "--dir", tmp_path)
    assert "store-1 has no metrics endpoint" in one_line_error(result, 1)

    assert cluster.add_metrics_ports(spec) == ["store-1", "coordinator-1"]
    again = LocalCluster(tmp_path).load()
    addresses = [p.metrics_address for p in again.processes]
    assert all(a.startswith("127.0.0.1:") for a in addresses) and len(set(addresses)) == 2
    command = cluster.command(again, again.get("store-1"))
    assert command[command.index("--metrics-addr") + 1] == addresses[0]
    assert cluster.add_metrics_ports(again) == []  # nothing left to add


def test_serve_refuses_a_wildcard_or_bad_metrics_address(tmp_path):
    for addr, words in (("0.0.0.0:9100", "wildcard"), ("[::]:1", "wildcard"),
                        ("9100", "expected host:port")):
        result = nokv("store", "serve", "--id", "1", "--listen", "127.0.0.1:1",
                      "--coordinator", "127.0.0.1:2", "--data", tmp_path / "d",
                      "--metrics-addr", addr)
        assert result.returncode == 2, result.stderr
        line = result.stderr.strip()
        assert line.startswith("nokv: argument --metrics-addr:") and words in line
    assert not (tmp_path / "d").exists()
