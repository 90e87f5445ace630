"""`nokv outbox list | retry | resolve` on the shared cluster (real processes): a terminal
publish refused permanently (failpoint `store.publish_terminal` = `return(...)` on the region
leader) leaves a TERMINAL_BLOCKED entry that keeps the store DEGRADED; an operator retries it
(blocked again: the cause is still there), then resolves it as published; the store's current
state is READY again and root lists the operator's RecoveryRecord for the transition.

The split key sorts before every key the other CLI tests split or route (`adm/m`, `aw/k`,
`zz/tomb`), so the regions they look at are not changed."""

from __future__ import annotations

import json

from cli_harness import TOPOLOGY, admin_split, ok, one_line_error, parsed, wait_for

KEY, SPLIT = "aaob/1", "aaob/5"
REFUSAL = "refused by the outbox test"


def blocked_of(cluster, store: str, tid: str) -> list[dict]:
    body = cluster.json("outbox", "list", store)
    return [b for b in body["blocked"] if b["transition_id"] == tid]


def parsed_any(result) -> dict:
    """`cluster status --json` exits 3 when some process is unhealthy: parse it anyway."""
    assert result.returncode in (0, 3), (result.returncode, result.stderr)
    return json.loads(result.stdout)


def abandon_leftovers(cluster, store: str) -> None:
    """A failed run must not leave the shared cluster's store DEGRADED."""
    for b in cluster.json("outbox", "list", store)["blocked"]:
        if REFUSAL in b["error"]:
            cluster.run("outbox", "resolve", store, b["seq"], "--as", "abandoned", "--reason",
                        "cleanup after a failed test")


def test_a_blocked_terminal_event_is_retried_then_resolved(cluster):
    seen: dict[str, str] = {}
    try:
        _blocked_retried_resolved(cluster, seen)
    finally:
        if seen.get("store"):
            abandon_leftovers(cluster, seen["store"])


def _blocked_retried_resolved(cluster, seen: dict[str, str]) -> None:
    if "ok" not in TOPOLOGY:
        admin_split(cluster, "aaa-probe/")  # skips when the stores cannot split
    ok(cluster.run("kv", "put", KEY, "x"))
    leader = cluster.json("route", KEY, "--freshness", "strong")["leader_store_id"]
    store = f"store-{leader}"
    seen["store"] = store
    # earlier splits' backup copies still waiting on this store would be refused too
    wait_for(lambda: not cluster.json("outbox", "list", store)["pending"], 30,
             f"{store}'s outbox to drain")
    ok(cluster.run("failpoint", "set", store, "store.publish_terminal", f'return("{REFUSAL}")'))
    tid = ""
    try:
        reply = cluster.json("admin", "split", SPLIT, "--no-wait", "--timeout", "20", timeout=60)
        tid = reply["transition_id"]
        assert tid, reply
        (entry,) = wait_for(lambda: blocked_of(cluster, store, tid), 30,
                            f"{tid} blocked on {store}")
        assert REFUSAL in entry["error"] and entry["event"] == "SPLIT_COMMITTED", entry
        assert entry["purpose"] == "terminal"
        seq = entry["seq"]

        # the store is DEGRADED because of it, and says so
        listing, execution = cluster.many(("outbox", "list", store),
                                          ("execution", store, "--json"))
        text = ok(listing)
        assert text.splitlines()[0].startswith(f"{store}: 1 blocked, "), text
        assert "current state DEGRADED" in text and "blocked event(s)" in text
        assert f"{seq} " in text and tid in text and "next: `nokv outbox retry" in text
        body = parsed(execution)
        assert body["current_state"]["state"] == "DEGRADED"
        assert body["transitions"][tid]["stage"] == "TERMINAL_BLOCKED"

        # refusals: one line, exit 1 (2 for usage), nothing changed
        unknown, no_reason, bad_as = cluster.many(
            ("outbox", "resolve", store, "999999", "--as", "published", "--reason", "x"),
            ("outbox", "resolve", store, seq, "--as", "abandoned", "--reason", " "),
            ("outbox", "resolve", store, seq, "--as", "sideways", "--reason", "x"))
        line = one_line_error(unknown, 1)
        assert f"{store} refused the request: rejected/INVALID: no blocked outbox entry with " \
               "seq 999999" in line, line
        assert "needs a reason" in one_line_error(no_reason, 1)
        assert "invalid choice: 'sideways'" in one_line_error(bad_as, 2)
        assert [b["seq"] for b in blocked_of(cluster, store, tid)] == [seq]

        # retry while the cause is still there: back in the outbox, refused, blocked again
        out = ok(cluster.run("outbox", "retry", store, seq))
        assert f"blocked entry {seq} (SPLIT_COMMITTED of {tid}) moved back into the outbox" \
            in out, out
        (again,) = wait_for(lambda: [b for b in blocked_of(cluster, store, tid)
                                     if b["seq"] != seq], 30, f"{tid} blocked again")
    finally:
        ok(cluster.run("failpoint", "clear", store, "store.publish_terminal"))

    # resolve: root completed the split from another replica's copy
    reason = "root completed it from a backup copy"
    resolved = cluster.json("outbox", "resolve", store, again["seq"], "--as", "published",
                            "--reason", reason)
    assert resolved["action"] == "resolve" and resolved["store"] == store
    assert f"blocked entry {again['seq']} resolved as published" in resolved["detail"]
    assert not [b for b in resolved["blocked"] if b["transition_id"] == tid]

    def ready():
        body = cluster.json("execution", store)
        return body if body["current_state"]["state"] == "READY" else None

    body = wait_for(ready, 30, f"{store} to be READY again")
    assert body["current_state"]["blocked_events"] == 0
    assert body["transitions"][tid]["stage"] == "TERMINAL_PUBLISHED"
    assert "operator resolved" in body["transitions"][tid]["history"][-1]["note"]
    status = cluster.run("cluster", "status", "--json")
    rows = {r["name"]: r for r in parsed_any(status)["processes"]}
    assert rows[store]["healthy"] is True, rows[store]

    def recorded():
        story = cluster.json("transitions", "show", tid)
        return [r for r in story["recovery_records"]
                if r["action"] == "operator_resolved_published"]

    (record,) = wait_for(recorded, 30, f"the operator's recovery record of {tid} in root")
    assert REFUSAL in record["failure_evidence"]
    assert "SPLIT_COMMITTED" in record["remained"] and reason in record["remained"]
    final = ok(cluster.run("outbox", "list", store))
    assert final.splitlines()[0] == f"{store}: 0 blocked, 0 pending; current state READY"
