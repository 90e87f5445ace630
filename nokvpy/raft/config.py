"""Configuration of one raft peer.

Owns: the knobs of the core and their validation. Never holds state that changes while the
node runs. Randomness comes from `rng` (a `random.Random`): pass a seeded one in tests and
simulations; by default it is seeded from the node id so runs are reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .read_only import ReadOnlyOption
from .types import NONE, Storage


@dataclass(slots=True)
class Config:
    id: int
    storage: Storage
    election_tick: int = 10
    heartbeat_tick: int = 1
    # Last applied index, when restarting with a state machine that already applied entries.
    applied: int = 0
    # Bytes of entry data per MsgApp (at least one entry is always sent); None = unlimited.
    max_size_per_msg: int | None = 1 << 20
    max_inflight_msgs: int = 256
    # Bytes of entry data the leader accepts uncommitted before dropping proposals; 0 = no limit.
    max_uncommitted_entries_size: int = 0
    check_quorum: bool = True
    pre_vote: bool = True
    read_only_option: ReadOnlyOption = ReadOnlyOption.SAFE
    disable_proposal_forwarding: bool = False
    # Leader: when the commit index advances, do not broadcast it at once in empty appends;
    # it rides on the next append or heartbeat, or on `RawNode.flush_commit()` (the driver
    # calls it when no append followed within a short delay). Saves followers one write per
    # commit under load; a follower's applied index lags by at most that delay.
    lazy_commit_broadcast: bool = False
    # A Ready's messages that may leave before the Ready is persisted go in
    # `Ready.early_messages` instead of `Ready.messages` (the rule is in rawnode.py). Off, every
    # message waits for the persist: the caller then needs to know nothing about the rule.
    early_messages: bool = False
    # Hibernation (0: off): a leader idle for this many ticks, with every peer holding its
    # whole log and everything committed and applied, asks its peers to stop ticking; the
    # caller stops ticking a node while `RawNode.hibernating` and calls `RawNode.wake` before
    # it steps anything into it again. See "Hibernating regions" in docs/protocols.md.
    hibernate_tick: int = 0
    rng: random.Random | None = None

    def validate(self) -> None:
        if self.id == NONE:
            raise ValueError("cannot use none as id")
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat tick must be greater than 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election tick must be greater than heartbeat tick")
        if self.hibernate_tick < 0:
            raise ValueError("hibernate tick must not be negative")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max inflight messages must be greater than 0")
        if self.read_only_option == ReadOnlyOption.LEASE_BASED and not self.check_quorum:
            raise ValueError("check_quorum must be enabled when read_only_option is LEASE_BASED")
        if self.rng is None:
            self.rng = random.Random(self.id)
