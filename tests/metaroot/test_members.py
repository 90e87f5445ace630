"""The metaroot membership record and its rules (metaroot.members), without processes.

- the fold of conf changes into `Members` agrees with the raft core's own configuration
  (`Raft.apply_conf_change`) over random sequences, removed ids only grow, and the record
  survives its JSON form;
- `check_change` refuses what must be refused (unknown, reused or bad ids, the last voter, a
  second change while a learner waits, a learner that has not caught up) and allows the rest;
- the state machine applies conf change entries into the durable record in the same batch as
  the applied index, rebuilds it on reload, and carries it in a snapshot;
- a metaroot client adopts a peer list only from a newer membership.
"""

from __future__ import annotations

import random

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from metaroot import members as members_mod
from metaroot import rootlog
from metaroot.members import PROMOTE_MAX_LAG, Members, check_change, conf_change_for
from metaroot.service import RootStateMachine
from nokvpy.client.meta import MetaClient
from nokvpy.protocol import RootToken
from nokvpy.protocol.metaroot_rpc import ConfirmTokenReply, MetarootSnapshotData
from nokvpy.raft import Config, RawNode
from nokvpy.raft.storage import MemoryStorage
from nokvpy.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Snapshot,
    SnapshotMetadata,
)
from nokvpy.storage import Env, WriteBatch
from nokvpy.storage.schema import RAFT_DBS
from nokvpy.wire import decode

FOUNDERS = {1: "127.0.0.1:1001", 2: "127.0.0.1:1002", 3: "127.0.0.1:1003"}


def founded() -> Members:
    m = Members.founding(FOUNDERS)
    for i, nid in enumerate(sorted(FOUNDERS), start=1):
        m = m.after(ConfChange(ConfChangeType.ADD_NODE, nid), i)
    return m


def raft_node(voters: list[int]) -> RawNode:
    node = RawNode(Config(id=voters[0], storage=MemoryStorage(), rng=random.Random(1)))
    node.bootstrap(voters)
    return node


changes = st.lists(st.tuples(st.sampled_from(list(ConfChangeType)), st.integers(1, 6)),
                   max_size=30)


@settings(max_examples=200, deadline=None)
@given(changes)
def test_fold_agrees_with_the_raft_configuration(seq):
    m, node = founded(), raft_node([1, 2, 3])
    for i, (kind, nid) in enumerate(seq, start=10):
        cc = ConfChange(kind, nid, f"127.0.0.1:{2000 + nid}".encode())
        before = m
        m = m.after(cc, i)
        cs = node.apply_conf_change(cc)
        assert (m.voters, m.learners) == (tuple(sorted(cs.voters)), tuple(sorted(cs.learners)))
        assert m.conf_index == i and m.voters  # never without a voter
        assert set(before.removed) <= set(m.removed)  # removed ids are never forgotten
        if before.is_member(nid) and not m.is_member(nid):
            assert nid in m.removed and nid not in m.addrs
        assert set(m.peers()) == set(m.ids())
        assert Members.from_json(m.to_json()) == m


def test_addresses_ride_on_the_conf_changes():
    m = founded()
    assert m.peers() == FOUNDERS and m.conf_index == 3
    m = m.after(conf_change_for("add_learner", 4, "127.0.0.1:1004"), 10)
    assert m.learners == (4,) and m.peers()[4] == "127.0.0.1:1004"
    m = m.after(conf_change_for("promote", 4), 11)
    assert m.voters == (1, 2, 3, 4) and m.learners == () and m.addrs[4] == "127.0.0.1:1004"
    m = m.after(conf_change_for("remove", 1), 12)
    assert m.voters == (2, 3, 4) and 1 not in m.addrs and m.removed == (1,)
    # a joining peer knows addresses but is in no configuration until the log says so
    j = Members.joining({**FOUNDERS, 4: "127.0.0.1:1004"})
    assert j.voters == () and not j.is_member(4) and j.addrs[4] == "127.0.0.1:1004"
    assert j.after(ConfChange(ConfChangeType.ADD_NODE, 1), 1).peers() == {1: FOUNDERS[1]}
    # the last voter stays (as in the raft core), and is not recorded removed
    one = Members.founding({1: "a:1"}).after(ConfChange(ConfChangeType.ADD_NODE, 1), 1)
    assert one.after(conf_change_for("remove", 1), 2).voters == (1,)


@pytest.mark.parametrize("kind, node_id, address, reason", [
    ("rename", 4, "", "invalid_change"),
    ("add_learner", 0, "127.0.0.1:9", "invalid_change"),
    ("add_learner", True, "127.0.0.1:9", "invalid_change"),
    ("add_learner", "4", "127.0.0.1:9", "invalid_change"),
    ("add_learner", 2, "127.0.0.1:9", "already_member"),
    ("add_learner", 5, "127.0.0.1:9", "id_retired"),
    ("add_learner", 6, "nowhere", "invalid_change"),
    ("add_learner", 6, "127.0.0.1:0", "invalid_change"),
    ("add_learner", 6, "127.0.0.1:1003", "address_in_use"),
    ("promote", 2, "", "not_a_learner"),
    ("promote", 6, "", "not_a_learner"),
    ("remove", 6, "", "unknown_peer"),
    ("remove", 5, "", "unknown_peer"),
])
def test_refusals(kind, node_id, address, reason):
    m = founded().after(conf_change_for("add_learner", 5, "127.0.0.1:1005"), 4) \
        .after(conf_change_for("remove", 5), 5)
    bad = check_change(m, kind, node_id, address)
    assert bad is not None and bad.reason == reason, bad


def test_one_change_at_a_time_and_promotion_after_catch_up():
    m = founded()
    assert check_change(m, "add_learner", 4, "127.0.0.1:1004") is None
    assert check_change(m, "remove", 3) is None
    m = m.after(conf_change_for("add_learner", 4, "127.0.0.1:1004"), 10)
    # while 4 waits for promotion: no other add, no other removal
    for kind, nid, addr in (("add_learner", 5, "127.0.0.1:1005"), ("remove", 3, "")):
        bad = check_change(m, kind, nid, addr)
        assert bad is not None and bad.reason == "conf_change_pending" and bad.retry
    assert check_change(m, "remove", 4) is None  # undoing the add is allowed
    behind = check_change(m, "promote", 4, learner_match=10, commit=11 + PROMOTE_MAX_LAG)
    assert behind is not None and behind.reason == "learner_behind" and behind.retry
    assert check_change(m, "promote", 4, learner_match=None, commit=5).reason == "learner_behind"
    assert check_change(m, "promote", 4, learner_match=10, commit=10 + PROMOTE_MAX_LAG) is None
    last = Members.founding({1: "a:1"}).after(ConfChange(ConfChangeType.ADD_NODE, 1), 1)
    assert check_change(last, "remove", 1).reason == "last_voter"


def open_env(path) -> Env:
    return Env.open(str(path), dbs=RAFT_DBS + rootlog.ROOT_DBS)


def conf_entry(index: int, cc: ConfChange) -> Entry:
    return Entry(1, index, EntryType.CONF_CHANGE, cc.encode())


async def test_state_machine_records_membership_durably(tmp_path):
    env = open_env(tmp_path / "a")
    try:
        sm = RootStateMachine(env, 32, Members.founding(FOUNDERS))
        seen: list[Members] = []
        sm.on_members = seen.append
        ents = [conf_entry(i, ConfChange(ConfChangeType.ADD_NODE, n))
                for i, n in enumerate((1, 2, 3), start=1)]
        ents.append(conf_entry(4, conf_change_for("add_learner", 4, "127.0.0.1:1004")))
        batch = WriteBatch()
        results = sm.stage_apply(batch, ents)
        assert sm.members.conf_index == 0  # not before the batch is durable
        await env.commit(batch)
        sm.after_commit(ents, results)
        assert results[-1] == sm.members and seen == [sm.members]
        assert sm.members.learners == (4,) and sm.applied_index() == 4
        # reload: the record comes back from disk alone
        again = RootStateMachine(env, 32)
        assert again.members == sm.members and again.applied_index() == 4
        # a snapshot carries it; a peer restored from it knows every address
        index, data = sm.snapshot()
        snap_data = decode(data)
        assert isinstance(snap_data, MetarootSnapshotData)
        env_b = open_env(tmp_path / "b")
        try:
            other = RootStateMachine(env_b, 32, Members.joining({9: "127.0.0.1:9"}))
            batch = WriteBatch()
            other.stage_restore(batch, Snapshot(SnapshotMetadata(index, 1, ConfState((1, 2, 3),
                                                                                     (4,))), data))
            await env_b.commit(batch)
            assert other.members == sm.members
            assert members_mod.load(env_b) == sm.members
        finally:
            env_b.close()
    finally:
        env.close()


def test_client_adopts_only_a_newer_peer_list():
    client = MetaClient(object(), ["a:1", "b:2", "c:3"])
    client.leader = "a:1"
    newer = ConfirmTokenReply(RootToken(1, 5), {1: "a:1", 2: "b:2", 3: "c:3", 4: "d:4"}, 10)
    assert client.learn_peers(newer) and client.addrs == ["a:1", "b:2", "c:3", "d:4"]
    older = ConfirmTokenReply(RootToken(1, 5), {1: "a:1", 2: "b:2"}, 9)
    assert not client.learn_peers(older) and len(client.addrs) == 4
    assert not client.learn_peers(ConfirmTokenReply(RootToken(1, 6)))  # an older peer's reply
    shrunk = ConfirmTokenReply(RootToken(1, 7), {2: "b:2", 3: "c:3", 4: "d:4"}, 12)
    assert client.learn_peers(shrunk) and client.addrs == ["b:2", "c:3", "d:4"]
    assert client.leader is None  # it was removed: not followed any more


def test_removed_reason_from_either_source(tmp_path):
    env = open_env(tmp_path / "r")
    try:
        m = founded()
        assert members_mod.removed_reason(env, 2, m) == ""
        assert "was removed" in members_mod.removed_reason(
            env, 2, m.after(conf_change_for("remove", 2), 9))
        batch = WriteBatch()
        members_mod.stage_removed(batch, "metaroot-2 was removed (told by metaroot-1)")
        trio.run(env.commit, batch)
        assert members_mod.removed_reason(env, 2, m) == "metaroot-2 was removed (told by " \
                                                        "metaroot-1)"
    finally:
        env.close()
