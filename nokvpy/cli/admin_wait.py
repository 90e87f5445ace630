"""The end state of a `nokv admin` command: wait for it, judge it, print it.

Owns: reading, level-triggered, what the cluster says now (the coordinator catalog: a
BEST_EFFORT region scan with its leaders map and the transitions still pending in root; every
store's execution status: which peer of a region it hosts, initialized or not, at which
epoch, and its tombstones), judging whether the end state an admin command causes holds (pure
functions of that view, `judge`), polling until it does or `--wait-timeout` passes, and
rendering the end state for people and for `--json`.

End states (what `judge` requires):
- add-peer R S: the catalog lists a voter (not a learner) of R on S; S itself hosts that peer
  id, initialized, at the catalog's epoch; R has a leader; no transition of R is pending.
- remove-peer R S: the catalog no longer lists S in R; R has a leader; nothing is pending on
  R; S, when it answers, hosts no initialized peer of R (a store that is down or does not
  answer removes its replica when it returns: said in the notes, not a failure).
- split KEY: two catalog regions meet at KEY, each with a leader, nothing pending on them,
  and every voter store of each hosts it initialized at the catalog's epoch.
- merge L R: R is gone from the catalog; L covers both ranges; L has a leader; nothing is
  pending on L.
- transfer-leader R S: the catalog's leader of R is S.
- tombstone R: R is gone from the catalog.
(The catalog installs a peer change's target when it is planned, before any store applied
it: the stores' own reports are what say it happened.)

Never sends an admin request, never changes the cluster, never imports `data_cmd` (which
calls this module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from nokvpy.cli.common import CliError
from nokvpy.cli.output import kv_lines, plain, readable, show_key
from nokvpy.protocol import Freshness, RegionDescriptor, RegionState
from nokvpy.protocol.coordinator_rpc import (
    ListStoresRequest,
    ListTransitionsRequest,
    ScanRegionsRequest,
)
from nokvpy.protocol.store_rpc import ExecutionStatusRequest

INTERVAL = 0.2  # seconds between two looks at the cluster
STORE_CALL = 1.0  # longest wait for one store's status in one look
COORDINATOR_CALL = 2.0


@dataclass(frozen=True)
class Goal:
    """What one admin command is to bring about. `region_id`: the region it was sent for
    (split: the parent; merge: the left one); `other_region_id`: merge's right region;
    `merged_range`: merge's expected [start, end) of the left region afterwards."""

    action: str  # split | merge | add-peer | remove-peer | transfer-leader | tombstone
    region_id: int = 0
    store_id: int = 0
    split_key: bytes = b""
    other_region_id: int = 0
    merged_range: tuple[bytes, bytes] | None = None

    def title(self) -> str:
        if self.action == "split":
            return f"split at {show_key(self.split_key) or '-inf'}"
        if self.action == "merge":
            return f"merge of region {self.other_region_id} into region {self.region_id}"
        if self.action in ("add-peer", "remove-peer", "transfer-leader"):
            return f"{self.action} region {self.region_id} store {self.store_id}"
        return f"{self.action} region {self.region_id}"


@dataclass(frozen=True)
class StoreRef:
    store_id: int
    name: str
    address: str


@dataclass
class StoreView:
    """One store's answer: its execution status `body`, or `error` (why there is none)."""

    name: str
    body: dict[str, Any] | None = None
    error: str = ""

    def replica(self, region_id: int) -> dict[str, Any] | None:
        regions = (self.body or {}).get("regions") or {}
        r = regions.get(str(region_id))
        return r if isinstance(r, dict) else None

    def tombstone_text(self, region_id: int) -> str:
        body = self.body or {}
        peers = body.get("tombstoned_peers") or {}
        if str(region_id) in peers:
            return f"tombstoned peer {peers[str(region_id)]}"
        if region_id in (body.get("tombstones") or ()):
            return "tombstoned"
        return "no tombstone"


@dataclass
class View:
    """One level-triggered look at the cluster."""

    regions: dict[int, RegionDescriptor] = field(default_factory=dict)
    leaders: dict[int, int] = field(default_factory=dict)
    stores: dict[int, StoreView] = field(default_factory=dict)
    pending: list[dict[str, Any]] = field(default_factory=list)  # transitions pending in root
    catalog_error: str = ""

    def region_at(self, start_key: bytes) -> RegionDescriptor | None:
        return next((d for d in self.regions.values() if d.start_key == start_key), None)

    def region_ending_at(self, end_key: bytes) -> RegionDescriptor | None:
        return next((d for d in self.regions.values() if d.end_key == end_key), None)

    def store_name(self, store_id: int) -> str:
        sv = self.stores.get(store_id)
        return sv.name if sv is not None else f"store-{store_id}"


@dataclass
class Verdict:
    problems: list[str]  # what is missing: the end state holds when this is empty
    notes: list[str]  # what is true and worth saying, but not missing
    shown: list[int]  # regions the end state is about (in the catalog)
    gone: list[int]  # regions the end state wants gone from the catalog

    @property
    def reached(self) -> bool:
        return not self.problems


# ---- judging (pure) ------------------------------------------------------------------------


def judge(goal: Goal, view: View) -> Verdict:
    """Whether the end state of `goal` holds in `view`, and what is missing if not."""
    v = Verdict([], [], [], [])
    if view.catalog_error:
        v.problems.append(f"the coordinator did not answer: {view.catalog_error}")
        return v
    JUDGES[goal.action](goal, view, v)
    return v


def _shown_region(view: View, rid: int, v: Verdict) -> RegionDescriptor | None:
    """Region `rid` of the catalog, noted as shown in the end state; None (and a problem)
    when the catalog does not list it."""
    d = view.regions.get(rid)
    if d is None:
        v.problems.append(f"region {rid} is not in the catalog")
        return None
    v.shown.append(rid)
    return d


def _judge_add_peer(goal: Goal, view: View, v: Verdict) -> None:
    rid, sid = goal.region_id, goal.store_id
    d = _shown_region(view, rid, v)
    if d is None:
        return
    p = d.peer_on(sid)
    if p is None:
        v.problems.append(f"the catalog lists no peer of region {rid} on store {sid} "
                          f"(peers: {peers_text(d)})")
    elif p.learner:
        v.problems.append(f"the catalog lists peer {p.peer_id} on store {sid} as a learner, "
                          "not yet promoted to voter")
    else:
        gap = replica_gap(view, sid, rid, p.peer_id, d)
        if gap:
            v.problems.append(f"the catalog lists peer {p.peer_id} on store {sid} as a voter, "
                              f"but {gap}")
    _need_leader(view, rid, v)
    _need_nothing_pending(view, [rid], v)


def _judge_remove_peer(goal: Goal, view: View, v: Verdict) -> None:
    rid, sid = goal.region_id, goal.store_id
    d = _shown_region(view, rid, v)
    if d is None:
        return
    p = d.peer_on(sid)
    if p is not None:
        v.problems.append(f"the catalog still lists peer {p.peer_id} on store {sid}"
                          + (" (a learner)" if p.learner else ""))
    _need_leader(view, rid, v)
    _need_nothing_pending(view, [rid], v)
    sv = view.stores.get(sid)
    name = view.store_name(sid)
    if sv is None or sv.error:
        why = sv.error if sv is not None else "not known to this command"
        v.notes.append(f"{name} not reachable ({why}): it removes its replica when it returns")
        return
    r = sv.replica(rid)
    if r is not None and r.get("initialized") and p is None:
        v.problems.append(f"the catalog no longer lists store {sid} in region {rid}, but {name} "
                          f"still hosts peer {r.get('peer_id')} of it, initialized, at epoch "
                          f"{epoch_text(r.get('epoch'))}")


def _judge_split(goal: Goal, view: View, v: Verdict) -> None:
    key = goal.split_key
    left, right = view.region_ending_at(key), view.region_at(key)
    shown_key = show_key(key)
    if left is None:
        v.problems.append(f"no catalog region ends at {shown_key}")
    if right is None:
        v.problems.append(f"no catalog region starts at {shown_key}")
    for d in (left, right):
        if d is None:
            continue
        v.shown.append(d.region_id)
        _need_leader(view, d.region_id, v)
        for p in d.voters():
            gap = replica_gap(view, p.store_id, d.region_id, p.peer_id, d)
            if gap:
                v.problems.append(gap)
    _need_nothing_pending(view, v.shown, v)


def _judge_merge(goal: Goal, view: View, v: Verdict) -> None:
    lid, rid = goal.region_id, goal.other_region_id
    v.gone.append(rid)
    gone = view.regions.get(rid)
    if gone is not None:
        v.problems.append(f"region {rid} is still in the catalog ({range_text(gone)}, "
                          f"epoch {gone.epoch})")
    d = _shown_region(view, lid, v)
    if d is None:
        return
    if goal.merged_range is not None and (d.start_key, d.end_key) != goal.merged_range:
        start, end = goal.merged_range
        v.problems.append(f"region {lid} covers {range_text(d)}, not yet "
                          f"{range_text(RegionDescriptor(lid, start, end))}")
    _need_leader(view, lid, v)
    _need_nothing_pending(view, [lid], v)


def _judge_transfer_leader(goal: Goal, view: View, v: Verdict) -> None:
    rid, sid = goal.region_id, goal.store_id
    if _shown_region(view, rid, v) is None:
        return
    leader = view.leaders.get(rid, 0)
    if leader != sid:
        now = f"store-{leader}" if leader else "no store"
        claim = (view.stores.get(sid).replica(rid) or {}) if view.stores.get(sid) else {}
        hint = (f" ({view.store_name(sid)} itself reports it leads: the coordinator has "
                "not heard it yet)") if claim.get("leader") else ""
        v.problems.append(f"the catalog's leader of region {rid} is {now}, not store "
                          f"{sid}{hint}")


def _judge_tombstone(goal: Goal, view: View, v: Verdict) -> None:
    rid = goal.region_id
    v.gone.append(rid)
    d = view.regions.get(rid)
    if d is not None and d.state != RegionState.TOMBSTONE:
        v.problems.append(f"region {rid} is still in the catalog ({range_text(d)}, "
                          f"epoch {d.epoch})")
        return
    hosting = [sv.name for _, sv in sorted(view.stores.items()) if sv.replica(rid) is not None]
    if hosting:
        v.notes.append(f"{', '.join(hosting)} still host a replica: each destroys it when a "
                       "heartbeat reply tells it the region is gone")


JUDGES: dict[str, Callable[[Goal, View, Verdict], None]] = {
    "add-peer": _judge_add_peer, "remove-peer": _judge_remove_peer, "split": _judge_split,
    "merge": _judge_merge, "transfer-leader": _judge_transfer_leader,
    "tombstone": _judge_tombstone,
}


def _need_leader(view: View, rid: int, v: Verdict) -> None:
    if view.leaders.get(rid):
        return
    d = view.regions.get(rid)
    claims = []
    for sv in view.stores.values():
        r = sv.replica(rid)
        if r is not None and r.get("leader"):
            behind = ""
            if d is not None and epoch_pair(r.get("epoch")) != (d.epoch.version, d.epoch.conf_ver):
                behind = f", behind the catalog's {d.epoch}"
            claims.append(f"{sv.name} reports it leads at epoch {epoch_text(r.get('epoch'))}{behind}")
    v.problems.append(f"region {rid} has no leader in the catalog"
                      + (f" ({'; '.join(claims)})" if claims else ""))


def _need_nothing_pending(view: View, rids: list[int], v: Verdict) -> None:
    for t in view.pending:
        touched = [r for r in t.get("region_ids") or () if r in rids]
        if touched:
            v.problems.append(f"transition {t.get('transition_id')} ({t.get('kind')}) is still "
                              f"pending in root")


def replica_gap(view: View, store_id: int, rid: int, peer_id: int, d: RegionDescriptor) -> str:
    """What store `store_id` lacks to host peer `peer_id` of region `rid`, initialized, at
    the catalog's epoch ("" when it does)."""
    name = view.store_name(store_id)
    sv = view.stores.get(store_id)
    if sv is None:
        return f"{name} is not a store this command knows"
    if sv.error:
        return f"{name} {sv.error}"
    r = sv.replica(rid)
    if r is None:
        return f"{name} reports no replica of region {rid} ({sv.tombstone_text(rid)})"
    if r.get("peer_id") != peer_id:
        return f"{name} hosts peer {r.get('peer_id')} of region {rid}, not peer {peer_id}"
    if not r.get("initialized"):
        return f"{name} hosts peer {peer_id} of region {rid} uninitialized (no data yet)"
    epoch = epoch_pair(r.get("epoch"))
    want = (d.epoch.version, d.epoch.conf_ver)
    if epoch != want:
        return (f"{name} hosts peer {peer_id} of region {rid} at epoch {epoch_text(epoch)}, "
                f"the catalog's is {d.epoch}")
    return ""


# ---- text ------------------------------------------------------------------------------


def epoch_pair(epoch: Any) -> tuple[int, int] | None:
    if isinstance(epoch, list | tuple) and len(epoch) == 2:
        return int(epoch[0]), int(epoch[1])
    return None


def epoch_text(epoch: Any) -> str:
    pair = epoch_pair(epoch)
    return f"v{pair[0]}/c{pair[1]}" if pair else "-"


def range_text(d: RegionDescriptor) -> str:
    return f"[{show_key(d.start_key) or '-inf'}, {show_key(d.end_key) or '+inf'})"


def peers_text(d: RegionDescriptor) -> str:
    return ", ".join(f"store-{p.store_id}/peer-{p.peer_id}" + (" (learner)" if p.learner else "")
                     for p in d.peers) or "none"


def store_state(sv: StoreView, rid: int) -> dict[str, Any]:
    """One store's view of region `rid`, for the end state."""
    if sv.error:
        return {"unreachable": sv.error}
    r = sv.replica(rid)
    if r is None:
        return {"replica": None, "tombstone": sv.tombstone_text(rid)}
    pair = epoch_pair(r.get("epoch"))
    return {"peer_id": r.get("peer_id"), "initialized": bool(r.get("initialized")),
            "epoch": {"version": pair[0], "conf_ver": pair[1]} if pair else None,
            "leader": bool(r.get("leader"))}


def store_state_text(state: dict[str, Any]) -> str:
    if "unreachable" in state:
        return f"unreachable: {state['unreachable']}"
    if "peer_id" not in state:
        return f"no replica ({state.get('tombstone')})"
    epoch = state.get("epoch")
    parts = [f"peer {state['peer_id']}",
             "initialized" if state.get("initialized") else "uninitialized",
             f"epoch v{epoch['version']}/c{epoch['conf_ver']}" if epoch else "epoch -"]
    if state.get("leader"):
        parts.append("leader")
    return ", ".join(parts)


def end_state(goal: Goal, view: View, verdict: Verdict, waited: float) -> dict[str, Any]:
    """The end state as plain data: for `--json`, and rendered by `end_state_text`."""
    regions = []
    for rid in verdict.shown + verdict.gone:
        d = view.regions.get(rid) if rid in verdict.shown else None
        entry: dict[str, Any] = {"region_id": rid, "in_catalog": d is not None}
        if d is not None:
            entry.update({
                "start_key": show_key(d.start_key), "end_key": show_key(d.end_key),
                "range": range_text(d), "epoch": plain(d.epoch),
                "peers": [{"store_id": p.store_id, "peer_id": p.peer_id, "learner": p.learner}
                          for p in d.peers],
                "leader": view.leaders.get(rid) or None})
        entry["stores"] = {sv.name: store_state(sv, rid)
                           for _, sv in sorted(view.stores.items())}
        regions.append(entry)
    return {"action": goal.action, "reached": verdict.reached, "waited_s": round(waited, 2),
            "regions": regions, "missing": list(verdict.problems), "notes": list(verdict.notes),
            "pending": list(view.pending)}


def end_state_text(state: dict[str, Any]) -> str:
    head = (f"-- end state: reached after {state['waited_s']:g}s" if state["reached"]
            else f"-- end state: not reached after {state['waited_s']:g}s")
    blocks = []
    for r in state["regions"]:
        lines: dict[str, Any] = {"region": r["region_id"]}
        if not r["in_catalog"]:
            lines["catalog"] = "gone"
        else:
            epoch = r["epoch"]
            lines.update({
                "range": r["range"], "epoch": f"v{epoch['version']}/c{epoch['conf_ver']}",
                "peers": ", ".join(f"store-{p['store_id']}/peer-{p['peer_id']}"
                                   + (" (learner)" if p["learner"] else "") for p in r["peers"]),
                "leader": f"store-{r['leader']}" if r["leader"] else "-"})
        for name, s in r["stores"].items():
            lines[name] = store_state_text(s)
        blocks.append(kv_lines(lines))
    tail = [f"note: {note}" for note in state["notes"]]
    tail += [f"missing: {problem}" for problem in state["missing"]]
    return "\n".join([head, "\n\n".join(blocks), *tail] if blocks else [head, *tail])


# ---- looking at the cluster ------------------------------------------------------------------


async def merge_goal(client: Any, left: int, right: int) -> Goal:
    """The goal of merging `right` into `left`: `left` then covers both current ranges
    (unknown when they are not neighbours: the store refuses such a merge anyway)."""
    reply = await client.call_coordinator(
        ScanRegionsRequest(b"", b"", 100000, Freshness.BEST_EFFORT))
    regions = {d.region_id: d for d in reply.descriptors}
    lhs, rhs = regions.get(left), regions.get(right)
    merged = None
    if lhs is not None and rhs is not None:
        if lhs.end_key and lhs.end_key == rhs.start_key:
            merged = (lhs.start_key, rhs.end_key)
        elif rhs.end_key and rhs.end_key == lhs.start_key:
            merged = (rhs.start_key, lhs.end_key)
    return Goal("merge", left, other_region_id=right, merged_range=merged)



async def store_refs(client: Any, spec: Any) -> list[StoreRef]:
    """The stores to ask: a local cluster's from its cluster.json, else the coordinator's
    list (retired stores left out)."""
    if spec is not None:
        return [StoreRef(p.node_id, p.name, p.address) for p in spec.of_kind("store")]
    reply = await client.call_coordinator(ListStoresRequest())
    return [StoreRef(s.store_id, f"store-{s.store_id}", s.address) for s in reply.stores
            if plain(s.state) != "RETIRED"]


async def observe(client: Any, stores: list[StoreRef], region_id: int = 0,
                  not_running: Callable[[str], bool] | None = None,
                  store_timeout: float = STORE_CALL) -> View:
    """One look: the catalog, pending transitions and every store's status, concurrently.
    Never raises for an unanswered call: the view says who did not answer."""
    view = View()

    async def catalog() -> None:
        try:
            reply = await client.call_coordinator(
                ScanRegionsRequest(b"", b"", 100000, Freshness.BEST_EFFORT), COORDINATOR_CALL)
            pending = await client.call_coordinator(ListTransitionsRequest(False), COORDINATOR_CALL)
        except Exception as exc:  # noqa: BLE001 - a look that failed is a view with a hole
            view.catalog_error = readable(str(exc)) or type(exc).__name__
            return
        view.regions = {d.region_id: d for d in reply.descriptors}
        view.leaders = {int(k): int(v) for k, v in (reply.leaders or {}).items() if v}
        view.pending = [{"transition_id": e.transition_id, "kind": plain(e.kind),
                         "region_ids": list(e.region_ids)} for e in pending.entries]

    async def one(ref: StoreRef) -> None:
        sv = view.stores[ref.store_id] = StoreView(ref.name)
        if not_running is not None and not_running(ref.name):
            sv.error = "is not running"
            return
        try:
            # transition "-" matches none: the status without its transitions table
            reply = await client.rpc.call(ref.address, ExecutionStatusRequest(region_id, "-"),
                                          timeout=store_timeout)
        except Exception as exc:  # noqa: BLE001 - an unanswered store is part of the view
            name = type(exc).__name__
            sv.error = (f"did not answer within {store_timeout:.2g}s (paused or overloaded?)"
                        if name == "RpcTimeoutError" else f"is unreachable ({name})")
            return
        sv.body = reply.body if isinstance(reply.body, dict) else {}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(catalog)
        for ref in stores:
            nursery.start_soon(one, ref)
    return view


async def wait_end_state(client: Any, goal: Goal, *, spec: Any = None,
                         not_running: Callable[[str], bool] | None = None,
                         timeout: float = 30.0, interval: float = INTERVAL) -> dict[str, Any]:
    """Poll until the end state of `goal` holds; return it (`end_state`). At the deadline
    raise CliError naming what is missing; its `end_state` attribute has the last look."""
    started = trio.current_time()
    deadline = started + timeout
    stores = await store_refs(client, spec)
    # one region when the goal is about one; split and merge look at every region
    region_id = goal.region_id if goal.action in ("add-peer", "remove-peer",
                                                  "transfer-leader", "tombstone") else 0
    while True:
        view = await observe(client, stores, region_id, not_running)
        verdict = judge(goal, view)
        now = trio.current_time()
        if verdict.reached:
            return end_state(goal, view, verdict, now - started)
        if now + interval >= deadline:
            state = end_state(goal, view, verdict, now - started)
            err = CliError(f"{goal.title()}: end state not reached within {timeout:g}s: "
                           + "; ".join(verdict.problems))
            err.end_state = state  # type: ignore[attr-defined]
            raise err
        await trio.sleep(interval)
