"""metaroot's own membership: the peers of the metaroot raft group and their addresses.

Owns: `Members` (voters, learners, the address of every member, the ids ever removed, the
raft index of the last conf change applied), its durable form in `root_meta` (`b"members"`,
staged in the batch that applies a conf change, together with the raft applied index and
the raft log's own conf state; `b"removed"` when this peer learned from another peer that it
was removed), the fold of a committed conf change into it (`Members.after`, mirroring
`Raft.apply_conf_change`), the checks of a requested change (`check_change`) and the
encoding of a new peer's address in its conf change (`conf_change_for`). Never proposes,
sends or decides when to change (metaroot.reconfig and the `nokv metaroot` commands do).

The rules, and why they keep the group safe:

- One change at a time. Every change is a single-step raft conf change (one voter more or
  less), so any majority of the old voters overlaps any majority of the new ones. A change
  is refused while the raft core holds one proposed but not applied, and while a learner
  waits for promotion: "add a peer" is the learner step plus its promotion, one change.
- A new peer starts on an empty data dir (`--join`): it never bootstraps, stays out of every
  configuration it applies until the ADD_LEARNER naming it, and as a learner it receives and
  applies the log (from index 1: metaroot's raft log is never compacted; a snapshot would
  carry this record too) but neither votes nor campaigns (the raft core only counts voters
  and only lets voters campaign). It is promoted (ADD_NODE) only once the leader sees its log
  within PROMOTE_MAX_LAG entries of the commit index, so a new voter never holds a quorum
  hostage while it copies the log.
- Removing the last voter is refused (the group could never elect again); the raft core
  refuses it too and ignores such an entry if one were committed.
- A removed id is never used again (`removed`), so "some peer's applied membership lists my
  id as removed" proves a committed removal of this very peer: a removed peer that missed its
  own removal entry learns it from any other peer's status and stops (`b"removed"`). A
  removed peer refuses to start again.
- The membership is replicated state: each peer folds the committed conf change entries of
  the log (which carry a new peer's address) into `Members` and stages it with the applied
  index, so a restart rebuilds it from its own data dir; `--peer` flags only seed a fresh
  data dir (the founders' bootstrap, or a joining peer's first address book).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from metaroot.rootlog import ROOT_META
from nokvpy.protocol.metaroot_rpc import CONF_CHANGE_KINDS
from nokvpy.raft.types import ConfChange, ConfChangeType, ConfState
from nokvpy.storage import Env, WriteBatch

MEMBERS_KEY = b"members"
LEGACY_PEERS_KEY = b"peers"  # {id: address} of the founding peers (data dirs before members)
REMOVED_KEY = b"removed"
# A learner is promoted when its log is at most this many entries behind the commit index.
PROMOTE_MAX_LAG = 64


@dataclass(slots=True, frozen=True)
class Members:
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    # the address of every member; on a joining peer also of the peers it was told of
    addrs: dict[int, str] = field(default_factory=dict)
    removed: tuple[int, ...] = ()  # ids removed from the group: never used again
    conf_index: int = 0  # raft index of the last conf change applied (0: none yet)

    @classmethod
    def founding(cls, peers: dict[int, str]) -> Members:
        """The record of a founding peer before the bootstrap entries apply."""
        return cls(tuple(sorted(peers)), (), dict(peers))

    @classmethod
    def joining(cls, peers: dict[int, str]) -> Members:
        """The record of a joining peer: it knows addresses, it is in no configuration."""
        return cls((), (), dict(peers))

    def ids(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.voters) | set(self.learners)))

    def is_member(self, node_id: int) -> bool:
        return node_id in self.voters or node_id in self.learners

    def peers(self) -> dict[int, str]:
        """{id: address} of every voter and learner."""
        return {i: self.addrs.get(i, "") for i in self.ids()}

    def conf_state(self) -> ConfState:
        return ConfState(self.voters, self.learners)

    def after(self, cc: ConfChange, index: int) -> Members:
        """The record once the conf change committed at raft `index` applied. Mirrors
        `Raft.apply_conf_change`: removing the last voter changes nothing; ADD_LEARNER of a
        voter changes nothing (no demotion)."""
        nid = cc.node_id
        voters, learners = set(self.voters), set(self.learners)
        addrs, removed = dict(self.addrs), set(self.removed)
        addr = decode_address(cc.context)
        if nid:
            if cc.type == ConfChangeType.ADD_NODE:
                voters.add(nid)
                learners.discard(nid)
                if addr:
                    addrs[nid] = addr
            elif cc.type == ConfChangeType.ADD_LEARNER:
                if nid not in voters:
                    learners.add(nid)
                    if addr:
                        addrs[nid] = addr
            elif cc.type == ConfChangeType.REMOVE_NODE and voters != {nid}:
                voters.discard(nid)
                learners.discard(nid)
                addrs.pop(nid, None)
                removed.add(nid)
        return Members(tuple(sorted(voters)), tuple(sorted(learners)), addrs,
                       tuple(sorted(removed)), index)

    def restored(self, conf_state: ConfState, index: int) -> Members:
        """The record after installing a snapshot at `index` that carries no record (an
        older snapshot): the members are the snapshot's, addresses what this peer knows."""
        ids = set(conf_state.voters) | set(conf_state.learners)
        gone = (set(self.voters) | set(self.learners)) - ids
        return replace(self, voters=tuple(sorted(conf_state.voters)),
                       learners=tuple(sorted(conf_state.learners)),
                       removed=tuple(sorted(set(self.removed) | gone)), conf_index=index)

    def to_json(self) -> str:
        return json.dumps({"voters": list(self.voters), "learners": list(self.learners),
                           "addrs": {str(k): v for k, v in sorted(self.addrs.items())},
                           "removed": list(self.removed), "conf_index": self.conf_index},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Members:
        raw = json.loads(text)
        return cls(tuple(int(i) for i in raw.get("voters", ())),
                   tuple(int(i) for i in raw.get("learners", ())),
                   {int(k): str(v) for k, v in raw.get("addrs", {}).items()},
                   tuple(int(i) for i in raw.get("removed", ())),
                   int(raw.get("conf_index", 0)))


# ---- addresses ----------------------------------------------------------------------------


def encode_address(addr: str) -> bytes:
    return addr.encode()


def decode_address(context: bytes) -> str:
    try:
        return bytes(context).decode()
    except UnicodeDecodeError:
        return ""


def valid_address(addr: object) -> bool:
    if not isinstance(addr, str) or ":" not in addr:
        return False
    host, _, port = addr.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


# ---- requested changes --------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Refusal:
    reason: str  # stable: invalid_change, conf_change_pending, already_member, id_retired,
    # address_in_use, not_a_learner, learner_behind, unknown_peer, last_voter
    message: str
    retry: bool = False  # the same request may succeed later (a pending change, catch-up)


def check_change(m: Members, kind: str, node_id: object, address: str = "", *,
                 learner_match: int | None = None, commit: int = 0) -> Refusal | None:
    """Why the leader refuses this change of membership `m`, or None. `learner_match` /
    `commit`: for a promotion, the raft index the leader knows the learner holds and the
    leader's commit index."""
    if kind not in CONF_CHANGE_KINDS:
        return Refusal("invalid_change", f"unknown change {kind!r} (one of "
                       f"{', '.join(CONF_CHANGE_KINDS)})")
    if not isinstance(node_id, int) or isinstance(node_id, bool) or node_id <= 0:
        return Refusal("invalid_change", f"peer id must be a positive integer, got {node_id!r}")
    name = f"metaroot-{node_id}"
    pending = [i for i in m.learners if i != node_id]
    if kind == "add_learner":
        if m.is_member(node_id):
            return Refusal("already_member", f"{name} is already a member")
        if node_id in m.removed:
            return Refusal("id_retired", f"{name} was removed from the group; a removed id "
                           "is never used again (take the next id)")
        if not valid_address(address):
            return Refusal("invalid_change", f"bad address {address!r}: expected HOST:PORT")
        users = [i for i in m.ids() if m.addrs.get(i) == address]
        if users:
            return Refusal("address_in_use", f"{address} is the address of metaroot-{users[0]}")
        if m.learners:
            return Refusal("conf_change_pending", f"metaroot-{m.learners[0]} is joining as a "
                           "learner: promote or remove it first", retry=True)
        return None
    if kind == "promote":
        if node_id in m.voters:
            return Refusal("not_a_learner", f"{name} is already a voter")
        if node_id not in m.learners:
            return Refusal("not_a_learner", f"{name} is not a learner of the group (members "
                           f"{list(m.ids())})")
        if learner_match is None or learner_match + PROMOTE_MAX_LAG < commit:
            return Refusal("learner_behind", f"{name} has not caught up yet (holds up to raft "
                           f"index {learner_match or 0}, commit index {commit})", retry=True)
        return None
    if not m.is_member(node_id):
        gone = " (it was removed already)" if node_id in m.removed else ""
        return Refusal("unknown_peer", f"{name} is not a member of the group{gone} "
                       f"(members {list(m.ids())})")
    if m.voters == (node_id,):
        return Refusal("last_voter", f"{name} is the last voter: the group could never elect "
                       "a leader again")
    if pending:
        return Refusal("conf_change_pending", f"metaroot-{pending[0]} is joining as a learner: "
                       "promote or remove it first", retry=True)
    return None


def conf_change_for(kind: str, node_id: int, address: str = "") -> ConfChange:
    if kind == "add_learner":
        return ConfChange(ConfChangeType.ADD_LEARNER, node_id, encode_address(address))
    if kind == "promote":
        return ConfChange(ConfChangeType.ADD_NODE, node_id)
    return ConfChange(ConfChangeType.REMOVE_NODE, node_id)


# ---- durable form -------------------------------------------------------------------------


def stage(batch: WriteBatch, members: Members) -> None:
    batch.put(ROOT_META, MEMBERS_KEY, members.to_json().encode())


def load(env: Env, conf_state: ConfState | None = None) -> Members:
    """The record in `env`; for a data dir written before it, the founding peers' addresses
    (`b"peers"`) with the raft log's membership (`conf_state`) when it has one."""
    raw = env.get(ROOT_META, MEMBERS_KEY)
    if raw is not None:
        return Members.from_json(raw)
    legacy = {int(k): v for k, v in json.loads(env.get(ROOT_META, LEGACY_PEERS_KEY)
                                               or b"{}").items()}
    if conf_state is not None and (conf_state.voters or conf_state.learners):
        return Members(tuple(sorted(conf_state.voters)), tuple(sorted(conf_state.learners)),
                       legacy)
    return Members.founding(legacy)


def stage_removed(batch: WriteBatch, how: str) -> None:
    """This peer learned it was removed (how: one line, shown when it refuses to start)."""
    batch.put(ROOT_META, REMOVED_KEY, how.encode())


def removed_reason(env: Env, node_id: int, members: Members) -> str:
    """Why this peer may not serve ("" when it may): it applied its own removal, or learned
    of it from another peer."""
    if node_id in members.removed:
        return f"metaroot-{node_id} was removed from the metaroot group (applied here at " \
               f"raft index {members.conf_index})"
    how = env.get(ROOT_META, REMOVED_KEY)
    return how.decode() if how else ""
