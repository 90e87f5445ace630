"""The driver as a thin shell: its persister is chosen once from the raft log's mode, its
input queue holds typed commands, and a command for a group that stopped before it ran is
answered, not stepped. One driver, one group of one voter, real LMDB."""

from __future__ import annotations

import pytest
import trio

from nokvpy.raft.types import EntryType
from nokvpy.replication.commands import Campaign, Propose, ReadIndex, TransferLeader
from nokvpy.replication.driver import Driver, ProposalError
from nokvpy.replication.group import Waiter
from nokvpy.replication.persist import LmdbPersister, WalPersister
from nokvpy.storage import Env, RaftLogStore


class Counter:
    """A state machine counting normal entries (results: the count after each)."""

    def __init__(self):
        self.applied = 0
        self.count = 0
        self._staged = (0, 0)

    def applied_index(self):
        return self.applied

    def stage_apply(self, batch, entries):
        count, out = self.count, []
        for e in entries:
            if e.type == EntryType.NORMAL and e.data:
                count += 1
            out.append(count)
        self._staged = (entries[-1].index, count)
        return out

    def after_commit(self, entries, results):
        self.applied, self.count = self._staged

    def snapshot(self):
        raise AssertionError("not in this test")

    def stage_restore(self, batch, snapshot):
        raise AssertionError("not in this test")

    def on_conf_change(self, cc, conf_state):
        pass


@pytest.fixture(params=["lmdb", "wal"])
def mode(request):
    return request.param


def open_log(tmp_path, mode):
    env = Env.open(tmp_path / "db", map_size=1 << 22, sync=False)
    log = RaftLogStore.open_wal(env, str(tmp_path / "wal")) if mode == "wal" else RaftLogStore(env)
    return env, log


def test_the_persister_follows_the_raft_log_mode(tmp_path, mode):
    env, log = open_log(tmp_path, mode)
    try:
        driver = Driver(env, log, lambda out: None)
        expected = WalPersister if mode == "wal" else LmdbPersister
        assert type(driver._persister) is expected
        group = driver.add_group(1, 1, log.group(1), Counter(), route=lambda n: n)
        driver.campaign(group)
        driver.transfer_leader(group, 2)
        assert [type(c) for c in driver._proposals] == [Campaign, TransferLeader]
        assert driver._proposals[1].to_node == 2
    finally:
        log.close()
        env.close()


async def test_proposals_apply_and_a_stopped_group_answers_its_commands(tmp_path, mode):
    env, log = open_log(tmp_path, mode)
    try:
        driver = Driver(env, log, lambda out: None, tick_interval=0.02)
        sm = Counter()
        group = driver.add_group(1, 1, log.group(1), sm, route=lambda n: n)
        group.node.bootstrap([1])
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            driver.campaign(group)
            with trio.fail_after(10):
                while not group.is_leader:
                    await trio.sleep(0.01)
                index, result = await driver.propose_at(group, b"a")
                assert result == 1 and sm.applied >= index
                assert await driver.propose(group, b"b") == 2
                read = await driver.read_index(group)
                assert read >= index
            # Commands queued for a group removed before the loop runs them.
            waiter = Waiter(term=0)
            driver._proposals.append(Propose(group, b"late", waiter))
            driver._proposals.append(ReadIndex(group, b"ctx"))
            driver.remove_group(1)
            driver._feed()
            assert isinstance(waiter.error, ProposalError) and waiter.error.reason == "stopped"
            assert not driver._proposals
            nursery.cancel_scope.cancel()
    finally:
        log.close()
        env.close()
