"""`nokv kv | route | regions | stores | diag | execution | transitions list | failpoint` against
the shared local cluster: human output and `--json` (parsed) for every read command.
Independent commands run concurrently (`cluster.many`)."""

from __future__ import annotations

import json

from cli_harness import ok, one_line_error, parsed


def test_kv_put_get_cas_delete_scan(cluster):
    put_a, put_b, put_bin, put_h = cluster.many(
        ("kv", "put", "kvt/a", "alice"), ("kv", "put", "kvt/b", "bob", "--json"),
        # 0x... is hex on the way in (keys and values)
        ("kv", "put", "0x6b76742f00ff", "0x00ff"), ("kv", "put", "kvt/h", "0x68656c6c6f"))
    assert ok(put_a).strip() == "OK" and ok(put_bin).strip() == "OK" and ok(put_h).strip() == "OK"
    put = parsed(put_b)
    assert put["key"] == "kvt/b" and put["applied_index"] > 0

    get, get_json, get_follower, miss, miss_json, get_bin, get_h, cas_ok = cluster.many(
        ("kv", "get", "kvt/a"), ("kv", "get", "kvt/a", "--json"),
        ("kv", "get", "kvt/a", "--read", "follower"),
        ("kv", "get", "kvt/none"), ("kv", "get", "kvt/none", "--json"),
        ("kv", "get", "0x6b76742f00ff"), ("kv", "get", "kvt/h"),
        ("kv", "cas", "kvt/c", "-", "new", "--json"))
    assert ok(get).strip() == "alice"
    assert parsed(get_json) == {"key": "kvt/a", "value": "alice", "found": True}
    assert ok(get_follower).strip() in ("alice", "(not found)")  # a follower may lag
    # a miss: "(not found)" with exit status 1; with --json a valid document and status 0
    assert miss.returncode == 1 and miss.stdout.strip() == "(not found)" and miss.stderr == ""
    assert parsed(miss_json) == {"key": "kvt/none", "value": None, "found": False}
    assert ok(get_bin).strip() == "0x00ff"  # not text: shown as hex on the way out
    assert ok(get_h).strip() == "hello"
    assert parsed(cas_ok) == {"key": "kvt/c", "succeeded": True, "current": None}

    # compare-and-swap: success, then failure (exit 1, says what the current value is)
    assert ok(cluster.run("kv", "cas", "kvt/a", "alice", "carol")).strip() == "OK"
    failed = cluster.run("kv", "cas", "kvt/a", "alice", "dave")
    assert failed.returncode == 1 and failed.stdout.strip() == "FAILED: current value is carol"

    scan_json, scan_table, del_json, del_c = cluster.many(
        ("kv", "scan", "kvt/", "kvt0", "--json"), ("kv", "scan", "kvt/", "kvt0", "--limit", "3"),
        ("kv", "delete", "kvt/b", "--json"), ("kv", "delete", "kvt/c"))
    assert parsed(del_json)["key"] == "kvt/b" and ok(del_c).strip() == "OK"
    body = parsed(scan_json)
    assert body["more"] is False
    rows = body["pairs"]
    keys = [r["key"] for r in rows]
    # byte order (kvt/\x00\xff first); the deletes ran concurrently, so b and c may be gone
    assert [k for k in keys if k not in ("kvt/b", "kvt/c")] == ["0x6b76742f00ff", "kvt/a", "kvt/h"]
    assert {"key": "kvt/a", "value": "carol"} in rows
    table = ok(scan_table).splitlines()
    assert table[0].split() == ["KEY", "VALUE"] and len(table) == 4
    assert table[2].index("carol") == table[0].index("VALUE")  # aligned columns
    assert cluster.json("kv", "scan", "kvt/", "kvt0") == {
        "pairs": [{"key": "0x6b76742f00ff", "value": "0x00ff"}, {"key": "kvt/a", "value": "carol"},
                  {"key": "kvt/h", "value": "hello"}], "more": False, "next_key": None}


def test_kv_scan_says_when_the_limit_cut_it(cluster):
    for result in cluster.many(*(("kv", "put", f"lim/{i}", str(i)) for i in range(3))):
        ok(result)
    cut, exact, text, whole = cluster.many(
        ("kv", "scan", "lim/", "lim0", "--limit", "2", "--json"),
        ("kv", "scan", "lim/", "lim0", "--limit", "3", "--json"),
        ("kv", "scan", "lim/", "lim0", "--limit", "2"), ("kv", "scan", "lim/", "lim0"))
    assert parsed(cut) == {"pairs": [{"key": "lim/0", "value": "0"}, {"key": "lim/1", "value": "1"}],
                           "more": True, "next_key": "lim/2"}
    assert parsed(exact)["more"] is False and len(parsed(exact)["pairs"]) == 3
    # for people: the table on stdout, the note on stderr (so a pipe gets only the table)
    assert [line.split()[0] for line in ok(text).splitlines()] == ["KEY", "lim/0", "lim/1"]
    assert text.stderr.strip() == ("(limit 2 reached: more keys from lim/2; raise --limit or "
                                   "scan from there)")
    assert whole.stderr == "" and len(ok(whole).splitlines()) == 4


def test_route_at_each_freshness_and_rejection(cluster):
    *fresh, lag0, text, rejected, rejected_line = cluster.many(
        *(("route", "kvt/a", "--freshness", f, "--json") for f in ("strong", "bounded", "best-effort")),
        ("route", "kvt/a", "--freshness", "bounded", "--max-root-lag", "0", "--json"),
        ("route", "kvt/a"),
        ("route", "kvt/a", "--freshness", "strong", "--required-root-token", "999999999", "--json"),
        ("route", "kvt/a", "--required-root-token", "999999999"))
    for name, result in zip(("STRONG", "BOUNDED", "BEST_EFFORT"), fresh, strict=True):
        reply = parsed(result)
        assert reply["rejected"] is False and reply["descriptor"]["region_id"] >= 1
        assert reply["witness"]["served_freshness"] == name
        assert reply["leader_store_id"] in {p["store_id"] for p in reply["descriptor"]["peers"]}
    assert parsed(lag0)["witness"]["root_lag"] == 0

    lines = ok(text).splitlines()
    assert "-- witness" in lines
    for field in ("region", "range", "epoch", "peers", "leader", "serving_class", "root_lag"):
        assert any(line.split()[0] == field for line in lines if line.strip()), field

    # a refusal is reported (never silently downgraded): JSON with exit 1, or one line
    assert rejected.returncode == 1
    body = json.loads(rejected.stdout)
    assert body["rejected"] is True and body["reason"] and body["witness"]["root_lag"] >= 0
    line = one_line_error(rejected_line, 1)
    assert "route rejected" in line and "witness: served" in line
    # keys print as text, never as Python byte strings
    assert "route for kvt/a rejected" in line and "b'" not in line
    assert body["message"].startswith("route for kvt/a rejected")


def test_regions_and_stores(cluster):
    regions_json, regions, stores_json, stores = cluster.many(
        ("regions", "--json"), ("regions",), ("stores", "--json"), ("stores",))
    body = parsed(regions_json)
    assert body["regions"] and {"regions", "leaders", "witness"} <= body.keys()
    lines = ok(regions).splitlines()
    assert lines[0].split() == ["REGION", "START", "END", "EPOCH", "PEERS", "LEADER", "REVISION"]
    assert "-inf" in lines[1]

    body = parsed(stores_json)
    assert sorted(s["store_id"] for s in body) == [1, 2, 3]
    lines = ok(stores).splitlines()
    assert lines[0].startswith("STORE_ID") and len(lines) == 4
    col = lines[0].index("ADDRESS")  # aligned: every address starts under its header
    assert all(line[col:].startswith("127.0.0.1:") for line in lines[1:])


def test_regions_digest_compares_the_replicas(cluster):
    as_json, human = cluster.many(("regions", "digest", "--json"), ("regions", "digest"))
    body = parsed(as_json)
    assert body["regions"]
    for region in body["regions"]:
        # the shared cluster takes writes from other tests: replicas may lag, never diverge
        assert region["verdict"] in ("agree", "lagging"), region
        assert {r["store_id"] for r in region["replicas"]} == {1, 2, 3}
        if region["verdict"] == "agree":
            assert len({r["digest"] for r in region["replicas"]}) == 1
    lines = ok(human).splitlines()
    assert lines[0].split() == ["REGION", "VERDICT", "STORE", "APPLIED", "KEYS", "DIGEST", "NOTE"]


def test_diag_and_execution_are_readable_and_json(cluster):
    address = next(p["address"] for p in cluster.spec["processes"] if p["name"] == "store-2")
    diag_json, diag, *by_ref, execution = cluster.many(
        ("diag", "--json"), ("diag",),
        *(("execution", ref, "--json") for ref in ("store-2", "2", address)),
        ("execution", "store-1"))
    body = parsed(diag_json)
    assert body["degraded_mode"] == "HEALTHY" and "grants_held" in body
    lines = ok(diag).splitlines()
    assert [line for line in lines if len(line) > 120] == [], "diag has lines too long to read"
    assert any(line.split()[:2] == ["degraded_mode", "HEALTHY"] for line in lines)
    # nested sections are indented blocks under a `name:` header
    assert "grants:" in lines and "counters:" in lines
    assert lines[lines.index("counters:") + 1].startswith("  ")

    for result in by_ref:
        body = parsed(result)
        assert body["store_id"] == 2
        assert body["restart_state"]["state"] in ("READY", "DEGRADED")
    lines = ok(execution).splitlines()
    assert lines[0].split() == ["store_id", "1"]
    assert "restart_state:" in lines
    assert [line for line in lines if len(line) > 120] == [], "execution has lines too long to read"
    assert any(line.split()[:2] == ["state", "READY"] for line in lines)


def test_transitions_list(cluster):
    as_json, text = cluster.many(("transitions", "list", "--json"), ("transitions", "list"))
    body = parsed(as_json)
    assert isinstance(body["transitions"], list) and "token" in body
    lines = ok(text).splitlines()
    assert lines == ["(none)"] or lines[0].split()[:2] == ["TRANSITION_ID", "KIND"]


def test_failpoint_set_list_clear(cluster):
    out = ok(cluster.run("failpoint", "set", "store-3", "store.publish_terminal", "3*raise"))
    assert out.splitlines()[0] == "store-3: set store.publish_terminal = 3*raise"
    listed, table = cluster.many(("failpoint", "list", "3", "--json"), ("failpoint", "list", "store-3"))
    assert parsed(listed)["active"] == {"store.publish_terminal": "3*raise"}
    lines = ok(table).splitlines()
    assert lines[0].split() == ["FAILPOINT", "SPEC", "HITS"]
    assert lines[1].split()[:2] == ["store.publish_terminal", "3*raise"]
    out = ok(cluster.run("failpoint", "clear", "store-3"))
    assert out.splitlines()[0] == "store-3: cleared every failpoint"
    # every process kind answers
    for result in cluster.many(*(("failpoint", "list", n, "--json")
                                 for n in ("store-3", "metaroot-1", "coordinator-1"))):
        assert parsed(result)["active"] == {}
