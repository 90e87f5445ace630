"""`nokv bench`, `nokv jepsen` (delegation to jepsen-lite) and `nokv demo`."""

from __future__ import annotations

import pytest
from cli_harness import (
    TOPOLOGY,
    admin_split,
    nokv,
    nokv_many,
    ok,
    one_line_error,
    parsed,
    pid_alive,
)


def test_bench_each_workload(cluster):
    puts, gets, routes = cluster.many(
        ("bench", "puts", "--duration", "1", "--clients", "2", "--json"),
        ("bench", "gets", "--duration", "1", "--clients", "2", "--json"),
        ("bench", "routes", "--duration", "1", "--clients", "2"), timeout=60)
    for workload, result in (("puts", puts), ("gets", gets)):
        report = parsed(result)
        assert report["workload"] == workload and report["ops"] > 0 and report["errors"] == 0
        assert report["ops_s"] > 0 and 0 < report["p50_ms"] <= report["p99_ms"]
    line = ok(routes).strip()
    assert line.startswith("routes: ") and "ops/s" in line and "errors 0" in line
    assert routes.stderr.splitlines()[-1].startswith("bench routes: done (")


def test_jepsen_is_jepsen_lite():
    help_text, bad, run_help = nokv_many(("jepsen", "--help"), ("jepsen", "nonsense"),
                                         ("jepsen", "run", "--help"))
    out = ok(help_text)
    for sub in ("check", "check-routes", "check-transitions", "run"):
        assert sub in out
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    # usage lines name the command that was run, not `python -m jepsen_lite`
    assert out.startswith("usage: nokv jepsen ")
    assert bad.stderr.startswith("usage: nokv jepsen ") and "jepsen_lite" not in bad.stderr
    assert ok(run_help).startswith("usage: nokv jepsen run ")


def test_bench_does_not_restart_processes_the_user_stopped(cluster):
    stopped = cluster.json("cluster", "stop", "store-3")
    try:
        refused = cluster.run("bench", "puts", "--duration", "1", "--clients", "2")
        line = one_line_error(refused, 1)
        assert f"store-3 is not running in {cluster.dir}" in line and "--restart-stopped" in line
        assert refused.stdout == "" and "store-3" not in cluster.pids()
        # asked to: it starts the stopped process, then benches
        report = cluster.json("bench", "puts", "--duration", "1", "--clients", "2",
                              "--restart-stopped", timeout=90)
        assert report["ops"] > 0
        assert pid_alive(cluster.pids()["store-3"]) and cluster.pids()["store-3"] != stopped["pid"]
    finally:
        if "store-3" not in cluster.pids():
            cluster.run("cluster", "restart", "store-3", timeout=60)
    cluster.wait_all_up(degraded_ok=True)


@pytest.mark.cli_last(8)
def test_demo_on_the_shared_cluster(cluster):
    """The narrated tour (it splits, pauses catch-up, kills and restarts a store) with --keep."""
    if "ok" not in TOPOLOGY:
        admin_split(cluster, "demo-probe/")  # the demo splits regions: skip if stores cannot
    result = nokv("demo", "--dir", cluster.dir, "--keep", timeout=120)
    assert result.returncode == 0, (result.stdout, result.stderr)
    out = result.stdout
    for step in range(1, 7):
        assert f"== {step}. " in out, step
    assert "demo finished in" in out and f"cluster left running in {cluster.dir}" in out
    # the store the demo killed and restarted serves again (its restart state as found at
    # start may be DEGRADED; current_state clears once it caught up)
    cluster.wait_all_up(degraded_ok=True)
