"""The Prometheus text writer and parser of nokvpy.metrics (pure: no I/O, no clock).

Rendering (HELP / TYPE lines, values, labels sorted), escaping of label values and HELP text,
histograms (cumulative buckets, +Inf, sum, count), name validation, duplicate refusal, the
collector protocol (merging, a failing collector left out) and a parse round-trip.
"""

from __future__ import annotations

import math

import pytest

from nokvpy import metrics as m


def test_render_counter_and_gauge():
    c = m.counter("nokv_x_total", "Things done.", 3)
    g = m.gauge("nokv_level", "A level.")
    g.add(1.5, region=2)
    g.add(-1, region=10)
    text = m.render([c, g])
    assert text == (
        "# HELP nokv_x_total Things done.\n"
        "# TYPE nokv_x_total counter\n"
        "nokv_x_total 3\n"
        "# HELP nokv_level A level.\n"
        "# TYPE nokv_level gauge\n"
        'nokv_level{region="2"} 1.5\n'
        'nokv_level{region="10"} -1\n'
    )
    assert m.render([]) == ""


def test_labels_sorted_and_keyword_names_through_a_mapping():
    fam = m.counter("nokv_admissions_total", "Admissions.")
    fam.add(4, {"class": "WRITE"}, reason="ACCEPTED")
    assert m.render([fam]).splitlines()[-1] == \
        'nokv_admissions_total{class="WRITE",reason="ACCEPTED"} 4'


@pytest.mark.parametrize("value, text", [
    (0, "0"), (7, "7"), (True, "1"), (False, "0"), (0.25, "0.25"), (1e-9, "1e-09"),
    (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN"), (2**63, str(2**63)),
])
def test_values(value, text):
    assert m.format_value(value) == text
    assert m.render([m.gauge("g", "", value)]).splitlines()[-1] == f"g {text}"


def test_escaping_of_label_values_and_help():
    fam = m.gauge("nokv_g", 'help with \\ backslash\nand a newline and "quotes"')
    fam.add(1, name='a"b\\c\nd', other="ünïcode")
    lines = m.render([fam]).splitlines()
    assert lines[0] == '# HELP nokv_g help with \\\\ backslash\\nand a newline and "quotes"'
    assert lines[2] == 'nokv_g{name="a\\"b\\\\c\\nd",other="ünïcode"} 1'
    (back,) = m.parse("\n".join(lines))
    assert back.help == fam.help
    assert back.samples == fam.samples


def test_histogram_buckets_sum_and_count():
    h = m.Histogram([0.1, 0.5, 1])
    for v in (0.05, 0.1, 0.3, 0.7, 5):
        h.observe(v)
    assert h.buckets() == [(0.1, 2), (0.5, 3), (1.0, 4)]
    text = m.render([h.family("nokv_latency_seconds", "Latency.", {"op": "get"})])
    assert text.splitlines()[2:] == [
        'nokv_latency_seconds_bucket{le="0.1",op="get"} 2',
        'nokv_latency_seconds_bucket{le="0.5",op="get"} 3',
        'nokv_latency_seconds_bucket{le="1.0",op="get"} 4',
        'nokv_latency_seconds_bucket{le="+Inf",op="get"} 5',
        'nokv_latency_seconds_sum{op="get"} 6.15',
        'nokv_latency_seconds_count{op="get"} 5',
    ]
    assert text.splitlines()[1] == "# TYPE nokv_latency_seconds histogram"


@pytest.mark.parametrize("buckets, count, problem", [
    ([(1, 2), (0.5, 3)], 3, "increasing"),
    ([(1, 3), (2, 2)], 3, "cumulative"),
    ([(1, 4)], 3, "at most the count"),
    ([(math.inf, 1)], 1, "finite"),
])
def test_histogram_refuses_bad_buckets(buckets, count, problem):
    with pytest.raises(ValueError, match=problem):
        m.Family("h", m.HISTOGRAM, "").add_histogram(buckets, count, 1.0)


def test_histogram_bounds_and_reserved_labels():
    with pytest.raises(ValueError):
        m.Histogram([])
    with pytest.raises(ValueError):
        m.Histogram([1, 1])
    with pytest.raises(ValueError, match="reserved"):
        m.Family("h", m.HISTOGRAM, "").add_histogram([], 0, 0, le="1")
    with pytest.raises(ValueError, match="reserved"):
        m.gauge("g", "").add(1, le="x")
    with pytest.raises(ValueError, match="add_histogram"):
        m.Family("h", m.HISTOGRAM, "").add(1)
    with pytest.raises(ValueError, match="for histograms"):
        m.gauge("g", "").add_histogram([], 0, 0)


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b", "é", "a{b}"])
def test_bad_metric_names(name):
    with pytest.raises(ValueError, match="bad metric name"):
        m.gauge(name, "")


@pytest.mark.parametrize("name", ["", "1a", "a-b", "__reserved", "a:b"])
def test_bad_label_names(name):
    with pytest.raises(ValueError, match="bad label name"):
        m.gauge("g", "").add(1, {name: "v"})


def test_good_names_and_bad_values():
    m.gauge("nokv:rule_level_1", "").add(1, _private="x", a1="y")
    with pytest.raises(ValueError, match="unknown type"):
        m.Family("x", "timer")
    with pytest.raises(TypeError, match="number"):
        m.gauge("g", "").add(None)
    with pytest.raises(TypeError, match="number"):
        m.gauge("g", "").add("3")
    with pytest.raises(ValueError, match="negative"):
        m.counter("c_total", "").add(-1)


def test_render_refuses_duplicates_and_foreign_samples():
    with pytest.raises(ValueError, match="appears twice"):
        m.render([m.gauge("g", "", 1), m.gauge("g", "", 2)])
    fam = m.gauge("g", "")
    fam.add(1, a="x").add(2, a="x")
    with pytest.raises(ValueError, match="appears twice"):
        m.render([fam])
    fam = m.gauge("g", "")
    fam.samples.append(m.Sample("other", (), 1))
    with pytest.raises(ValueError, match="does not belong"):
        m.render([fam])


def test_collect_merges_families_and_survives_a_failing_collector():
    def first():
        return [m.named_counters("rpc", {"a": 1}), m.gauge("g", "", 1)]

    def second():
        return [m.named_counters("store", {"a": 2, "note": "text"}),
                m.counter("g", "", 1),  # a type clash: left out
                m.named_counters("rpc", {"a": 9})]  # the same sample again: left out

    def broken():
        raise RuntimeError("sick")

    families, errors = m.collect([first, broken, second])
    by_name = {f.name: f for f in families}
    assert [s.value for s in by_name[m.COUNTER_FAMILY].samples] == [1, 2]
    assert by_name["g"].type == m.GAUGE and len(by_name["g"].samples) == 1
    assert [e[0] for e in errors] == ["broken", "second", "second"]
    assert "RuntimeError: sick" in errors[0][1]
    m.render(families)  # renders: nothing repeated


def test_storage_families():
    fams = {f.name: f for f in m.storage_families({
        "lmdb": {"transactions": 5, "batches": 7, "sync_ms": 12},
        "wal": {"fsyncs": 4, "frames": 6, "bytes": 405, "sync_ms": 3, "rotations": 0,
                "torn_bytes": 0, "stalls": 1, "segments": 1, "segment_bytes": 458,
                "durable_lsn": 5}})}
    fsyncs = {s.label("engine"): s.value for s in fams["nokv_storage_fsyncs_total"].samples}
    assert fsyncs == {"lmdb": 5, "wal": 4}
    assert fams["nokv_wal_bytes_total"].samples[0].value == 405
    assert "nokv_wal_bytes_total" not in {f.name for f in m.storage_families({"lmdb": {}})}


def test_parse_round_trip():
    h = m.Histogram([0.01, 0.1])
    h.observe(0.05)
    families = [
        m.gauge("nokv_process_info", "Which process.", 1, kind="store", id=3, version="0.1"),
        m.counter("nokv_process_cpu_seconds_total", "CPU.", 1.25),
        m.named_counters("driver", {"ticks_fed": 31, "weird{a=b,c=d}": 2}),
        m.gauge("nokv_empty", "No samples."),
        m.gauge("nokv_special", "", math.inf, x="+Inf"),
        h.family("nokv_scrape_seconds", "Scrapes."),
    ]
    text = m.render(families)
    parsed = m.parse(text)
    assert [(f.name, f.type, f.help) for f in parsed] == \
        [(f.name, f.type, f.help) for f in families]
    assert [f.samples for f in parsed] == [f.samples for f in families]
    assert m.render(parsed) == text
    # as_dict: plain JSON data
    special = next(f for f in parsed if f.name == "nokv_special").as_dict()
    assert special["samples"] == [{"name": "nokv_special", "labels": {"x": "+Inf"},
                                   "value": "+Inf"}]


def test_parse_accepts_what_other_exporters_write():
    text = ("# a comment\n"
            "untyped_metric 1 1700000000000\n"
            "# TYPE rpc summary\n"
            'rpc{quantile="0.5"} 0.2\n'
            "rpc_sum 3\n"
            "rpc_count 9\n"
            'spaced { a = "x" , b="y", } 2e3\r\n')
    by_name = {f.name: f for f in m.parse(text)}
    assert by_name["untyped_metric"].type == "untyped"
    assert [s.name for s in by_name["rpc"].samples] == ["rpc", "rpc_sum", "rpc_count"]
    assert by_name["spaced"].samples[0].labels == (("a", "x"), ("b", "y"))
    assert by_name["spaced"].samples[0].value == 2000.0


@pytest.mark.parametrize("text", [
    "no_value\n",
    "m{a=\"x\"\n",
    "m{a=x} 1\n",
    "m{a=\"x\",a=\"y\"} 1\n",
    "m one\n",
    "m 1 2 3\n",
    "{a=\"b\"} 1\n",
    "# TYPE h histogram\nh 1\n",
    "m 1\n# TYPE m gauge\n",
])
def test_parse_refuses_malformed_text(text):
    with pytest.raises(ValueError, match="line"):
        m.parse(text)


# ---- the families of each process kind, from status bodies (no process needed) ---------------

STORE_BODY = {
    "store_id": 1, "joined": True, "region_count": 2, "leader_count": 1,
    "restart_state": {"state": "READY", "outbox_backlog": 2, "blocked_events": 1},
    "current_state": {"state": "DEGRADED", "outbox_backlog": 9, "blocked_events": 9},
    "admissions": {"WRITE/ACCEPTED": 3, "READ/NOT_LEADER": 1},
    "outcomes": {"QUEUED": 3, "APPLIED": 3, "FAILED": 0},
    "queue_limit": 4096, "queue_waiters": {"2": 1}, "proposal_queue": 0,
    "drops": {"stale_epoch": 2}, "counters": {"peers_started": 2},
    "driver": {"ticks_fed": 31}, "transport": {"dropped{reason=queue_full}": 1},
    "storage": {"lmdb": {"transactions": 5, "batches": 5, "sync_ms": 9}},
    "transitions": {"t1": {"stage": "APPLIED"}, "t2": {"stage": "APPLIED"}},
    "tombstones": [3], "heartbeats_sent": 4, "last_heartbeat_error": "",
    "regions": {"1": {"leader": True, "applied_index": 5, "commit_index": 6, "in_flight": 0,
                      "epoch": [1, 1]},
                "2": {"leader": False, "applied_index": 0, "commit_index": 0, "in_flight": 0,
                      "epoch": []}},
    "topology": {"counters": {"splits": 1}, "outbox": {"failing": True, "counters": {}}},
}


def by_name(families):
    return {f.name: {tuple(sorted(dict(s.labels).items())): s.value for s in f.samples}
            for f in families}


def test_store_families_from_an_execution_status_body():
    from raftstore import metrics as store_metrics

    fams = by_name(store_metrics.families(STORE_BODY, {"1": 4}))
    assert fams["nokv_store_regions"] == {(): 2} and fams["nokv_store_leaders"] == {(): 1}
    assert fams["nokv_raft_leader"] == {(("region", "1"),): 1, (("region", "2"),): 0}
    assert fams["nokv_raft_applied_index"][(("region", "1"),)] == 5
    assert fams["nokv_raft_commit_index"][(("region", "1"),)] == 6
    assert fams["nokv_raft_term"] == {(("region", "1"),): 4}
    assert fams["nokv_region_epoch_version"] == {(("region", "1"),): 1}  # region 2: no epoch
    assert fams["nokv_admissions_total"][(("class", "READ"), ("reason", "NOT_LEADER"))] == 1
    assert fams["nokv_outcomes_total"][(("outcome", "APPLIED"),)] == 3
    assert fams["nokv_publish_outbox_backlog"] == {(): 2}  # the live count, not the cached one
    assert fams["nokv_publish_blocked_events"] == {(): 1}
    assert fams["nokv_publish_outbox_failing"] == {(): 1}
    assert fams["nokv_store_current_state"] == {(("state", "DEGRADED"),): 1}
    assert fams["nokv_store_transitions"] == {(("stage", "APPLIED"),): 2}
    assert fams["nokv_storage_fsyncs_total"] == {(("engine", "lmdb"),): 5}
    assert fams[m.COUNTER_FAMILY][(("name", "dropped{reason=queue_full}"),
                                   ("source", "transport"))] == 1
    assert fams[m.COUNTER_FAMILY][(("name", "splits"), ("source", "topology"))] == 1
    text = m.render(store_metrics.families(STORE_BODY))
    assert m.render(m.parse(text)) == text
    m.render(store_metrics.families({}))  # a sick store's sparse body still renders


def test_coordinator_families_from_a_diagnostics_body():
    from coordinator import metrics as coordinator_metrics

    body = {"catch_up_state": "LAGGING", "degraded_mode": "HEALTHY", "degraded_reasons": [],
            "root_lag": 3, "served_token": {"term": 2, "index": 7},
            "current_token": {"term": 2, "index": 10}, "root_reachable": True,
            "heard_within_window": True, "last_heard_ago_ms": -1, "paused": False,
            "grants_held": ["tso"], "standby_for": ["alloc_id"],
            "grants": {"duties": {"tso": {"held_by_self": True, "era": 2, "expires_in_ms": 2500},
                                  "alloc_id": {"held_by_self": False, "era": 1}}},
            "counters": {"grant.violations.primacy": 0, "route_reads.bounded": 10},
            "allocators": {"tso": {"served": 4}}, "scheduler_ready": True,
            "scheduler": {"counters": {"moves": 1}}, "store_count": 1, "region_count": 1,
            "stores": [{"store_id": 1, "state": "UP", "last_heartbeat_age_ms": 500}]}
    fams = by_name(coordinator_metrics.families(body))
    assert fams["nokv_coordinator_catch_up_state"] == {(("state", "LAGGING"),): 1}
    assert fams["nokv_coordinator_root_lag"] == {(): 3}
    assert fams["nokv_coordinator_grant_held"] == {(("duty", "alloc_id"),): 0,
                                                   (("duty", "tso"),): 1}
    assert fams["nokv_coordinator_grant_standby"][(("duty", "alloc_id"),)] == 1
    assert fams["nokv_coordinator_grant_expires_seconds"] == {(("duty", "tso"),): 2.5}
    assert fams["nokv_coordinator_last_heard_seconds"] == {(): -1}
    assert fams["nokv_coordinator_grant_violations_total"] == {(("rule", "primacy"),): 0}
    assert fams[m.COUNTER_FAMILY] == {
        (("name", "route_reads.bounded"), ("source", "coordinator")): 10,
        (("name", "moves"), ("source", "scheduler")): 1}
    assert fams["nokv_coordinator_store_heartbeat_age_seconds"] == {(("store", "1"),): 0.5}
    m.render(coordinator_metrics.families({}))


def test_metaroot_families_from_its_status():
    from metaroot import metrics as metaroot_metrics

    fams = by_name(metaroot_metrics.families({
        "term": 2, "commit_index": 12, "applied_index": 11, "is_leader": True, "leader_id": 1,
        "root_token": {"term": 2, "index": 10}, "peers": 3, "driver": {"ticks_fed": 7},
        "storage": {"lmdb": {"transactions": 13, "batches": 13, "sync_ms": 51}}}))
    assert fams["nokv_raft_term"] == {(): 2} and fams["nokv_raft_leader"] == {(): 1}
    assert fams["nokv_raft_commit_index"] == {(): 12}
    assert fams["nokv_raft_applied_index"] == {(): 11}
    assert fams["nokv_metaroot_root_index"] == {(): 10}
    assert fams["nokv_storage_sync_seconds_total"] == {(("engine", "lmdb"),): 0.051}
    m.render(metaroot_metrics.families({}))
