"""`nokv admin ...` waits for, and prints, the end state it caused (nokvpy/cli/admin_wait.py).

Unit tests judge hand-built views of the catalog and the stores (no processes; the polling
loop runs on trio's mock clock). The process tests reshape the shared cluster, so they run
after the other CLI tests (`cli_last` 6 and 7: after tests/cli/test_cli_admin.py, before the
demo and `cluster down`), and leave it as they found it: every store up, store 3 a voter of
the region again.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import trio
import trio.testing
from cli_harness import ok, one_line_error, parsed, wait_for

from nokvpy.cli.admin_wait import (
    Goal,
    StoreView,
    View,
    end_state,
    end_state_text,
    judge,
    wait_end_state,
)
from nokvpy.cli.main import CliError
from nokvpy.protocol import PeerMeta, RegionDescriptor, RegionEpoch
from nokvpy.protocol.coordinator_rpc import ListTransitionsReply, ScanRegionsReply
from nokvpy.protocol.store_rpc import ExecutionStatusReply

# ---- unit: the end-state predicates ------------------------------------------------------


def region(rid=1, peers=((1, 2), (2, 3), (3, 7)), epoch=(1, 5), start=b"", end=b"",
           learners=()) -> RegionDescriptor:
    return RegionDescriptor(rid, start, end, RegionEpoch(*epoch),
                            tuple(PeerMeta(s, p, s in learners) for s, p in peers))


def replica(peer_id, epoch=(1, 5), initialized=True, leader=False) -> dict:
    return {"peer_id": peer_id, "initialized": initialized, "epoch": list(epoch),
            "leader": leader, "applied_index": 10, "commit_index": 10}


def store(sid, regions=None, tombstoned=None, error="") -> StoreView:
    if error:
        return StoreView(f"store-{sid}", None, error)
    tombstoned = tombstoned or {}
    return StoreView(f"store-{sid}", {"regions": {str(k): v for k, v in (regions or {}).items()},
                                      "tombstones": sorted(tombstoned),
                                      "tombstoned_peers": {str(k): v for k, v in tombstoned.items()}})


def view(regions, stores, leaders=None, pending=()) -> View:
    return View({d.region_id: d for d in regions}, dict(leaders or {}),
                {int(s.name.split("-")[1]): s for s in stores}, list(pending))


def healthy_stores(epoch=(1, 5), peer3=7):
    return [store(1, {1: replica(2, epoch, leader=True)}), store(2, {1: replica(3, epoch)}),
            store(3, {1: replica(peer3, epoch)})]


ADD = Goal("add-peer", 1, store_id=3)
REMOVE = Goal("remove-peer", 1, store_id=3)


def test_add_peer_reached():
    v = judge(ADD, view([region()], healthy_stores(), {1: 1}))
    assert v.reached and v.problems == [] and v.shown == [1]


def test_add_peer_missing_voter():
    v = judge(ADD, view([region(peers=((1, 2), (2, 3)))], healthy_stores(), {1: 1}))
    assert v.problems == ["the catalog lists no peer of region 1 on store 3 "
                          "(peers: store-1/peer-2, store-2/peer-3)"]


def test_add_peer_learner_not_promoted():
    v = judge(ADD, view([region(learners=(3,))], healthy_stores(), {1: 1}))
    assert v.problems == ["the catalog lists peer 7 on store 3 as a learner, not yet promoted "
                          "to voter"]


def test_add_peer_store_behind_epoch():
    stores = healthy_stores()
    stores[2] = store(3, {1: replica(7, (1, 4))})
    v = judge(ADD, view([region()], stores, {1: 1}))
    assert v.problems == ["the catalog lists peer 7 on store 3 as a voter, but store-3 hosts "
                          "peer 7 of region 1 at epoch v1/c4, the catalog's is v1/c5"]


def test_add_peer_store_without_the_replica_names_its_tombstone():
    stores = healthy_stores()
    stores[2] = store(3, {}, tombstoned={1: 4})
    v = judge(ADD, view([region()], stores, {1: 1}))
    assert v.problems == ["the catalog lists peer 7 on store 3 as a voter, but store-3 reports "
                          "no replica of region 1 (tombstoned peer 4)"]


def test_add_peer_store_hosting_an_older_peer_or_uninitialized():
    stores = healthy_stores()
    stores[2] = store(3, {1: replica(4, (1, 3))})
    assert judge(ADD, view([region()], stores, {1: 1})).problems == [
        "the catalog lists peer 7 on store 3 as a voter, but store-3 hosts peer 4 of region 1, "
        "not peer 7"]
    stores[2] = store(3, {1: replica(7, (0, 0), initialized=False)})
    assert "store-3 hosts peer 7 of region 1 uninitialized" in judge(
        ADD, view([region()], stores, {1: 1})).problems[0]


def test_add_peer_unanswered_store_no_leader_and_pending_transition():
    stores = [store(1, {1: replica(2, (1, 4), leader=True)}), store(2, {1: replica(3, (1, 4))}),
              store(3, error="did not answer within 1s (paused or overloaded?)")]
    pending = [{"transition_id": "peer:1:add:3:7", "kind": "PEER_ADDITION", "region_ids": [1]},
               {"transition_id": "split:9:6d", "kind": "SPLIT", "region_ids": [9]}]
    v = judge(ADD, view([region()], stores, {}, pending))
    assert v.problems == [
        "the catalog lists peer 7 on store 3 as a voter, but store-3 did not answer within 1s "
        "(paused or overloaded?)",
        "region 1 has no leader in the catalog (store-1 reports it leads at epoch v1/c4, behind "
        "the catalog's v1/c5)",
        "transition peer:1:add:3:7 (PEER_ADDITION) is still pending in root"]


def test_remove_peer_reached_and_store_unreachable_is_a_note():
    catalog = [region(peers=((1, 2), (2, 3)), epoch=(1, 6))]
    stores = [store(1, {1: replica(2, (1, 6), leader=True)}), store(2, {1: replica(3, (1, 6))}),
              store(3, {}, tombstoned={1: 7})]
    v = judge(REMOVE, view(catalog, stores, {1: 1}))
    assert v.reached and v.notes == []
    stores[2] = store(3, error="is not running")
    v = judge(REMOVE, view(catalog, stores, {1: 1}))
    assert v.reached
    assert v.notes == ["store-3 not reachable (is not running): it removes its replica when it "
                       "returns"]


def test_remove_peer_not_reached():
    stores = healthy_stores()
    v = judge(REMOVE, view([region()], stores, {1: 1}))
    assert v.problems == ["the catalog still lists peer 7 on store 3"]
    catalog = [region(peers=((1, 2), (2, 3)), epoch=(1, 6))]
    v = judge(REMOVE, view(catalog, stores, {}))
    assert v.problems == [
        "region 1 has no leader in the catalog (store-1 reports it leads at epoch v1/c5, "
        "behind the catalog's v1/c6)",
        "the catalog no longer lists store 3 in region 1, but store-3 still hosts peer 7 of it, "
        "initialized, at epoch v1/c5"]


def test_split_needs_both_halves_led_and_hosted_at_the_catalog_epoch():
    goal = Goal("split", 1, split_key=b"m")
    left = region(1, epoch=(2, 5), end=b"m")
    right = region(9, peers=((1, 10), (2, 11), (3, 12)), epoch=(2, 5), start=b"m")

    def stores(right_on_3=(2, 5)):
        return [store(1, {1: replica(2, (2, 5), leader=True), 9: replica(10, (2, 5))}),
                store(2, {1: replica(3, (2, 5)), 9: replica(11, (2, 5), leader=True)}),
                store(3, {1: replica(7, (2, 5)), 9: replica(12, right_on_3)})]

    assert judge(goal, view([left, right], stores(), {1: 1, 9: 2})).reached
    v = judge(goal, view([left, right], stores((1, 5)), {1: 1}))
    assert v.problems == ["region 9 has no leader in the catalog (store-2 reports it leads at "
                          "epoch v2/c5)",
                          "store-3 hosts peer 12 of region 9 at epoch v1/c5, the catalog's is v2/c5"]
    v = judge(goal, view([region(1, epoch=(1, 5))], stores(), {1: 1}))
    assert v.problems == ["no catalog region ends at m", "no catalog region starts at m"]


def test_merge_and_tombstone_want_the_region_gone():
    goal = Goal("merge", 1, other_region_id=9, merged_range=(b"", b""))
    left = region(1, epoch=(3, 5))
    assert judge(goal, view([left], healthy_stores((3, 5)), {1: 1})).reached
    v = judge(goal, view([region(1, end=b"m"), region(9, start=b"m")], healthy_stores(), {1: 1}))
    assert v.problems == ["region 9 is still in the catalog ([m, +inf), epoch v1/c5)",
                          "region 1 covers [-inf, m), not yet [-inf, +inf)"]
    tomb = Goal("tombstone", 9)
    v = judge(tomb, view([left], [store(1, {9: replica(10)}), store(2)], {1: 1}))
    assert v.reached and v.notes == ["store-1 still host a replica: each destroys it when a "
                                     "heartbeat reply tells it the region is gone"]
    assert judge(tomb, view([region(9, start=b"m")], [], {})).problems == [
        "region 9 is still in the catalog ([m, +inf), epoch v1/c5)"]


def test_transfer_leader():
    goal = Goal("transfer-leader", 1, store_id=3)
    assert judge(goal, view([region()], healthy_stores(), {1: 3})).reached
    stores = healthy_stores()
    stores[2] = store(3, {1: replica(7, leader=True)})
    assert judge(goal, view([region()], stores, {1: 1})).problems == [
        "the catalog's leader of region 1 is store-1, not store 3 (store-3 itself reports it "
        "leads: the coordinator has not heard it yet)"]


def test_coordinator_silence_is_missing_state():
    v = judge(ADD, View(catalog_error="no coordinator reachable"))
    assert v.problems == ["the coordinator did not answer: no coordinator reachable"]


def test_end_state_is_plain_data_and_text():
    stores = healthy_stores()
    stores.append(store(4, error="did not answer within 1s (paused or overloaded?)"))
    look = view([region()], stores, {1: 1})
    state = end_state(ADD, look, judge(ADD, look), 0.4)
    json.dumps(state)  # plain data
    assert state["reached"] and state["regions"][0]["peers"][2] == {
        "store_id": 3, "peer_id": 7, "learner": False}
    assert state["regions"][0]["stores"]["store-3"] == {
        "peer_id": 7, "initialized": True, "epoch": {"version": 1, "conf_ver": 5},
        "leader": False}
    text = end_state_text(state).splitlines()
    assert text[0] == "-- end state: reached after 0.4s"
    assert text[1:6] == ["region   1", "range    [-inf, +inf)", "epoch    v1/c5",
                         "peers    store-1/peer-2, store-2/peer-3, store-3/peer-7",
                         "leader   store-1"]
    assert "store-1  peer 2, initialized, epoch v1/c5, leader" in text
    assert "store-4  unreachable: did not answer within 1s (paused or overloaded?)" in text


class FakeClient:
    """Answers the calls `wait_end_state` makes from a list of looks, one per poll interval
    of (mock) time since the first call; the last one repeats."""

    def __init__(self, looks: list[View]):
        self.looks = looks
        self.started: float | None = None
        self.rpc = self

    def look(self) -> View:
        now = trio.current_time()
        if self.started is None:
            self.started = now
        return self.looks[min(round((now - self.started) / 0.2), len(self.looks) - 1)]

    async def call_coordinator(self, request, timeout=None):
        look = self.look()
        if type(request).__name__ == "ScanRegionsRequest":
            return ScanRegionsReply(list(look.regions.values()), None, look.leaders)
        return ListTransitionsReply([], None)

    async def call(self, address, request, timeout=None):
        sv = self.look().stores[int(address)]
        if sv.error:
            raise TimeoutError(sv.error)
        return ExecutionStatusReply(sv.body)


class FakeSpec:
    def of_kind(self, kind):
        class Proc:
            def __init__(self, n):
                self.node_id, self.name, self.address = n, f"store-{n}", str(n)

        return [Proc(n) for n in (1, 2, 3)]


def run_waiting(client, goal, timeout):
    async def main():
        return await wait_end_state(client, goal, spec=FakeSpec(), timeout=timeout)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_wait_polls_until_the_end_state_holds():
    behind = healthy_stores()
    behind[2] = store(3, {}, tombstoned={1: 4})
    client = FakeClient([view([region()], behind, {1: 1})] * 3
                        + [view([region()], healthy_stores(), {1: 1})])
    state = run_waiting(client, ADD, 30)
    assert state["reached"] and state["waited_s"] == pytest.approx(0.6)


def test_wait_times_out_naming_what_is_missing():
    behind = healthy_stores()
    behind[2] = store(3, {}, tombstoned={1: 4})
    with pytest.raises(CliError) as info:
        run_waiting(FakeClient([view([region()], behind, {1: 1})]), ADD, 2)
    assert str(info.value) == (
        "add-peer region 1 store 3: end state not reached within 2s: the catalog lists peer 7 "
        "on store 3 as a voter, but store-3 reports no replica of region 1 (tombstoned peer 4)")
    assert info.value.end_state["reached"] is False


# ---- processes: the shared 3-store cluster ---------------------------------------------------


def catalog(cluster) -> dict:
    body = cluster.json("regions")
    return {"by_id": {r["region_id"]: r for r in body["regions"]},
            "leaders": {int(k): v for k, v in body["leaders"].items()}}


def aw_region(cluster) -> int:
    ok(cluster.run("kv", "put", "aw/k", "v1"))
    return cluster.json("route", "aw/k", "--freshness", "strong")["descriptor"]["region_id"]


def peer_on(region_state: dict, store_id: int) -> dict | None:
    return next((p for p in region_state["peers"] if p["store_id"] == store_id), None)


def admin_json(cluster, *args) -> dict:
    """`nokv admin ARGS --json` that must succeed with the end state reached."""
    body = cluster.json("admin", *args, "--timeout", "20", timeout=60)
    assert body["reply"]["outcome"] == "APPLIED", body
    assert body["end_state"]["reached"] and body["end_state"]["missing"] == [], body
    return body


@pytest.mark.cli_last(6)
def test_remove_add_and_transfer_print_their_end_states(cluster):
    rid = aw_region(cluster)
    leader = wait_for(lambda: catalog(cluster)["leaders"].get(rid), 20, f"a leader of region {rid}")
    before = catalog(cluster)["by_id"][rid]
    old = peer_on(before, 3)
    assert old is not None and not old["learner"], before

    # transfer-leader, as text: the reply lines, then the end state
    target = 2 if leader != 2 else 1
    out = ok(cluster.run("admin", "transfer-leader", rid, target, "--timeout", "20", timeout=60))
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["transition_id", "outcome", "stage"]
    head = lines.index(next(line for line in lines if line.startswith("-- end state")))
    assert lines[head].startswith("-- end state: reached after ")
    assert lines[head + 1].split() == ["region", str(rid)]
    assert f"leader   store-{target}" in lines

    removed = admin_json(cluster, "remove-peer", rid, 3)
    (state,) = removed["end_state"]["regions"]
    assert state["region_id"] == rid and peer_on(state, 3) is None and state["leader"]
    assert state["stores"]["store-3"]["replica"] is None
    assert state["epoch"]["conf_ver"] == before["epoch"]["conf_ver"] + 1

    added = admin_json(cluster, "add-peer", rid, 3)
    (state,) = added["end_state"]["regions"]
    new = peer_on(state, 3)
    assert new is not None and not new["learner"] and new["peer_id"] > old["peer_id"], state
    assert state["stores"]["store-3"] == {"peer_id": new["peer_id"], "initialized": True,
                                          "epoch": state["epoch"],
                                          "leader": state["leader"] == 3}
    assert state["leader"] and added["end_state"]["pending"] == []
    cluster.wait_kv("aw/k", "v1")

    # --no-wait: the store's reply only, as before
    body = cluster.json("admin", "transfer-leader", rid, leader, "--no-wait", "--timeout", "20",
                        timeout=60)
    assert set(body) == {"transition_id", "outcome", "stage", "detail"}, body


@pytest.mark.slow  # waits out a deadline (about 11 s)
@pytest.mark.cli_last(7)
def test_an_end_state_that_is_not_reached_fails_with_the_reason(cluster):
    """With store 3 paused (SIGSTOP): removing its replica succeeds and says store 3 is not
    reachable; adding it back cannot finish (the leader waits for store 3 to report the
    learner), so the request gets no answer and the wait names what is missing: exit 1."""
    rid = aw_region(cluster)
    leader = wait_for(lambda: catalog(cluster)["leaders"].get(rid), 20, f"a leader of region {rid}")
    if leader == 3:  # the request goes to the leader: not the store about to be paused
        admin_json(cluster, "transfer-leader", rid, 1)
    pid = cluster.pids()["store-3"]
    ok(cluster.run("cluster", "pause", "store-3"))
    try:
        removed = admin_json(cluster, "remove-peer", rid, 3)
        assert peer_on(removed["end_state"]["regions"][0], 3) is None
        assert any(note.startswith("store-3 not reachable (did not answer within 1s")
                   for note in removed["end_state"]["notes"]), removed["end_state"]

        failed = cluster.run("admin", "add-peer", rid, 3, "--timeout", "3", "--wait-timeout", "2",
                             timeout=60)
        line = one_line_error(failed, 1)
        assert line.startswith("nokv: add-peer sent to store ") and "got no answer within 3s" in line
        assert "its end state was not reached within 2s: " in line
        assert "store-3 did not answer within 1s (paused or overloaded?)" in line, line
        assert "-- end state: not reached after " in failed.stdout
        assert "missing: " in failed.stdout
    finally:  # SIGCONT directly: nothing can stop it from running
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    # the addition completes once store 3 answers again: its learner catches up
    def healed() -> bool:
        state = catalog(cluster)
        r = state["by_id"].get(rid)
        p = r and peer_on(r, 3)
        if not p or p["learner"] or not state["leaders"].get(rid):
            return False
        st = parsed(cluster.run("execution", "store-3", "--json", "--timeout", "2"))
        mine = st["regions"].get(str(rid)) or {}
        return (mine.get("peer_id") == p["peer_id"] and mine.get("initialized")
                and mine.get("epoch") == [r["epoch"]["version"], r["epoch"]["conf_ver"]])

    wait_for(healed, 40, f"store 3 to host region {rid} again after it was resumed")
    cluster.wait_all_up(degraded_ok=True)
    cluster.wait_kv("aw/k", "v1")
