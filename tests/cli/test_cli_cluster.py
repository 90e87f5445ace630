"""`nokv cluster up | status | logs | kill | restart | stop | pause | resume | down` on the shared
local cluster. The test that runs `cluster down` is ordered last (`cli_last`)."""

from __future__ import annotations

import json

import pytest
from cli_harness import nokv, ok, one_line_error, parsed, pid_alive

NAMES = ["metaroot-1", "coordinator-1", "store-1", "store-2", "store-3"]


def test_up_reports_progress_and_where_things_are(cluster):
    progress = cluster.up.stderr.splitlines()
    assert progress[0].startswith("cluster up: creating cluster nokv-")
    for name in NAMES:
        assert any(line.startswith(f"cluster up: {name} started (pid ") for line in progress), name
    assert progress[-1].startswith("cluster up: serving (")
    assert len(progress) == len(set(progress)), "a progress line was repeated"

    lines = cluster.up.stdout.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "ROLE", "PID", "ADDRESS", "HEALTH"]
    assert [line.split()[0] for line in lines[1:6]] == NAMES
    assert all(line.rstrip().endswith(" up") for line in lines[1:6])
    assert f"data in {cluster.dir / 'data'}" in cluster.up.stdout
    assert f"logs in {cluster.dir / 'logs'}" in cluster.up.stdout
    assert f"nokv cluster down --dir {cluster.dir}" in cluster.up.stdout
    assert (cluster.dir / "cluster.json").exists()
    assert sorted(cluster.pids()) == sorted(NAMES)


def unhealthy(result) -> dict:
    """The JSON of a `cluster status --json` that found a process down or unhealthy: it
    still prints the document, with exit status 3 (as `systemctl status` does)."""
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    body = json.loads(result.stdout)
    assert body["healthy"] is False
    return body


def test_up_again_restarts_only_what_is_not_running(cluster):
    before = cluster.pids()
    # the flags that shaped the cluster may be repeated; they are checked, not ignored
    again = cluster.json("cluster", "up", "--stores", "3", "--metaroot", "1", "--replication", "3",
                         timeout=90)
    assert again["created"] is False and again["cluster_id"] == cluster.spec["cluster_id"]
    assert {p["name"]: p["pid"] for p in again["processes"]} == before
    assert all(p["health"] == "up" for p in again["processes"])


def test_up_refuses_flags_that_conflict_with_the_existing_cluster(cluster):
    before = cluster.pids()
    stores, several = cluster.many(("cluster", "up", "--stores", "5"),
                                   ("cluster", "up", "--metaroot", "3", "--coordinators", "2",
                                    "--replication", "2", "--host", "127.0.0.2", "--json"))
    line = one_line_error(stores, 1)
    assert f"{cluster.dir} already holds cluster {cluster.spec['cluster_id']}" in line
    assert "--stores 5 but it has 3 stores" in line and "leave the flag out" in line
    assert stores.stdout == ""
    line = one_line_error(several, 1)
    for part in ("--metaroot 3 but it has 1 metaroot peer", "--coordinators 2 but it has 1 coordinator;",
                 "--replication 2 but it has replication 3",
                 "--host 127.0.0.2 but its processes listen on 127.0.0.1"):
        assert part in line, line
    assert cluster.pids() == before and len(cluster.spec["processes"]) == 5


def test_status_and_logs(cluster):
    status_json, status, one_log, all_logs, no_lines = cluster.many(
        ("cluster", "status", "--json"), ("cluster", "status"),
        ("cluster", "logs", "store-1", "--lines", "2"), ("cluster", "logs"),
        ("cluster", "logs", "metaroot-1", "--lines", "0"))
    body = parsed(status_json)  # exit status 0: every process up and healthy
    assert body["cluster_id"] == cluster.spec["cluster_id"] and body["healthy"] is True
    rows = {p["name"]: p for p in body["processes"]}
    assert list(rows) == NAMES
    assert {n: r["pid"] for n, r in rows.items()} == cluster.pids()
    assert rows["metaroot-1"]["role"] == "leader"
    assert rows["coordinator-1"]["role"].startswith("grant holder")
    assert all(r["health"] == "up" and r["healthy"] for r in rows.values())

    lines = ok(status).splitlines()
    col = lines[0].index("ADDRESS")  # aligned
    assert all(line[col:].startswith("127.0.0.1:") for line in lines[1:])

    lines = ok(one_log).splitlines()
    assert lines[0] == f"== store-1 ({cluster.dir / 'logs' / 'store-1.log'})" and len(lines) <= 3
    headers = [line for line in ok(all_logs).splitlines() if line.startswith("== ")]
    assert [h.split()[1] for h in headers] == NAMES
    assert ok(no_lines).splitlines() == [f"== metaroot-1 ({cluster.dir / 'logs' / 'metaroot-1.log'})"]


def test_kill_a_store_then_restart_it(cluster):
    ok(cluster.run("kv", "put", "cli/kill", "before"))
    pid = cluster.pids()["store-1"]
    out = ok(cluster.run("cluster", "kill", "store-1"))
    assert out.strip() == f"store-1: killed with SIGKILL (pid {pid})"
    assert not pid_alive(pid) and "store-1" not in cluster.pids()

    # a stopped process: one line that says so and how to start it again
    execution, failpoints, status, text, again = cluster.many(
        ("execution", "store-1"), ("failpoint", "list", "1"), ("cluster", "status", "--json"),
        ("cluster", "status"), ("cluster", "kill", "store-1", "--json"))
    for result in (execution, failpoints):
        line = one_line_error(result, 1)
        assert "store-1 is not running" in line and "nokv cluster restart store-1" in line
    rows = {p["name"]: p for p in unhealthy(status)["processes"]}
    assert rows["store-1"]["health"] == "down" and not rows["store-1"]["healthy"]
    assert rows["store-2"]["health"] == "up" and rows["store-2"]["healthy"]
    # the table still prints, then what is wrong; exit status 3
    assert text.returncode == 3 and text.stderr == ""
    lines = text.stdout.splitlines()
    assert lines[0].split()[0] == "NAME" and len(lines) == 1 + len(NAMES) + 2
    assert lines[-1] == "not healthy: store-1 down"
    assert parsed(again) == {"name": "store-1", "pid": None, "action": "not running"}

    # the region keeps serving on the other two replicas (a new leader if store-1 led it)
    cluster.wait_kv("cli/kill", "before", timeout=30)

    out = ok(cluster.run("cluster", "restart", "store-1"))
    new_pid = cluster.pids()["store-1"]
    assert out.strip() == f"store-1: started (pid {new_pid})" and new_pid != pid
    # `restart` returns once the process answers
    assert cluster.json("execution", "store-1")["store_id"] == 1


def test_stop_pause_resume(cluster):
    stopped = cluster.json("cluster", "stop", "store-3")
    assert stopped["action"] == "stopped" and not pid_alive(stopped["pid"])
    restarted = cluster.json("cluster", "restart", "store-3")
    assert restarted["action"] == "started" and pid_alive(restarted["pid"])

    pid = cluster.pids()["store-2"]
    out = ok(cluster.run("cluster", "pause", "store-2"))
    try:
        assert out.strip() == f"store-2: paused with SIGSTOP (pid {pid})"
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().split(") ", 1)[1][:1] == "T"
        execution, status = cluster.many(("execution", "store-2", "--timeout", "1"),
                                         ("cluster", "status", "--json"))
        assert "store-2" in one_line_error(execution, 1) and "did not answer within 1s" in execution.stderr
        health = {p["name"]: p["health"] for p in unhealthy(status)["processes"]}
        assert health["store-2"].startswith("unreachable")
    finally:
        resumed = cluster.json("cluster", "resume", "store-2")
    assert resumed == {"name": "store-2", "pid": pid, "action": "resumed with SIGCONT"}
    cluster.wait_all_up()  # store-2 answers again


@pytest.mark.cli_last(9)
def test_down_stops_everything_and_up_starts_it_again_from_its_data(cluster):
    ok(cluster.run("kv", "put", "a-cli/durable", "kept"))
    pids = {name: pid for name, pid in cluster.pids().items() if pid_alive(pid)}
    running = [name for name in reversed(NAMES) if name in pids]  # stores first

    out = ok(cluster.run("cluster", "down", timeout=60))
    assert out.splitlines()[0] == f"stopped {len(running)} process(es): {', '.join(running)}"
    assert f"data kept in {cluster.dir / 'data'}, logs in {cluster.dir / 'logs'}" in out
    # `down` returns once they are gone (SIGTERM, then SIGKILL after a grace period)
    assert [name for name, pid in pids.items() if pid_alive(pid)] == []
    assert list((cluster.dir / "pids").glob("*.pid")) == []
    # the description of the cluster and its data stay, so `cluster up` can start it again
    assert (cluster.dir / "cluster.json").exists() and (cluster.dir / "data" / "store-1").is_dir()

    status, get = cluster.many(("cluster", "status", "--json"), ("kv", "get", "a-cli/durable"))
    assert {p["health"] for p in unhealthy(status)["processes"]} == {"down"}
    line = one_line_error(get, 1)
    assert f"the cluster in {cluster.dir} is not running" in line and "nokv cluster up" in line

    up = nokv("cluster", "up", "--dir", cluster.dir, timeout=90)
    assert up.returncode == 0, up.stderr
    assert up.stderr.splitlines()[0].startswith("cluster up: starting cluster")
    cluster.wait_kv("a-cli/durable", "kept", timeout=30)

    pids = cluster.pids()
    down = cluster.json("cluster", "down", timeout=60)
    assert sorted(down["stopped"]) == sorted(NAMES)
    assert down["data"] == str(cluster.dir / "data") and down["logs"] == str(cluster.dir / "logs")
    assert not any(pid_alive(p) for p in pids.values())
    assert cluster.json("cluster", "down")["stopped"] == []  # nothing left to stop
