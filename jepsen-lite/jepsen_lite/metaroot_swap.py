"""The ``metaroot-swap`` fault: a metaroot peer joins the running group, then one leaves.

Owns: the seeded parameters (:func:`swap_params`), injecting and judging one window
(:func:`inject`, :func:`heal`, results with ``valid`` and ``outcome`` as
:mod:`.membership`'s) and keeping the control's cluster spec in step with cluster.json.
Never changes the metaroot group itself: both steps are the operator's commands, run as
processes (``nokv metaroot add-peer`` / ``remove-peer --dir RUN/cluster --json``), so the run
exercises exactly what an operator runs (one change at a time, the learner step, the
catch-up before promotion; docs/protocols.md "Metaroot membership change").

* inject: ``add-peer``; valid when the new peer is a voter.
* heal: ``remove-peer`` of one voter other than the new one, chosen at heal time: the
  leader (``remove: leader``: the leader removes itself and steps down) or a seeded pick of
  the others (``remove: follower``). Then the window is valid when the group elects a
  leader whose voters are the old count again, every coordinator's STRONG route read (which
  needs a metaroot quorum through the new membership: coordinators learn it from metaroot
  replies) answers, and the removed peer is stopped and recorded retired (never restarted).

A peer the run killed or paused earlier may be the one removed (``remove-peer`` handles a
peer that is down); a window whose add-peer is refused (a change still pending, another
window's peer) is skipped, not failed.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

import trio

from nokvpy.protocol import Freshness
from nokvpy.protocol.coordinator_rpc import GetRegionByKeyRequest
from nokvpy.protocol.metaroot_rpc import MetarootStatusRequest

SWAP_WAIT = 60.0  # seconds each CLI step may wait (`--wait`)
SETTLE_TIMEOUT = 30.0  # seconds the group has to show a leader and coordinators to serve STRONG
POLL = 0.5


def swap_params(rng: random.Random, by_kind: dict[str, list[str]]) -> tuple[str, dict]:
    return "metaroot", {"remove": rng.choice(["leader", "follower"]),
                        "pick": rng.randrange(2**31), "wait": SWAP_WAIT}


async def _nokv(control: Any, *args: str, timeout: float) -> tuple[int, dict | None, str]:
    """Run ``nokv ARGS --dir CLUSTER --json``; (exit status, parsed stdout or None, stderr)."""
    argv = [sys.executable, "-m", "nokvpy.cli.main", *args, "--dir", str(control.cluster.root),
            "--json"]
    with trio.move_on_after(timeout + 30) as scope:
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                      check=False)
    if scope.cancelled_caught:
        return -1, None, f"nokv {' '.join(args)} did not finish within {timeout + 30:g}s"
    try:
        out = json.loads(done.stdout) if done.stdout.strip() else None
    except ValueError:
        out = None
    return done.returncode, out, done.stderr.decode(errors="replace").strip()[-400:]


def _sync_spec(control: Any) -> None:
    """The control's spec (shared with every other fault of the run) takes cluster.json's
    process list, which the command changed."""
    fresh = control.cluster.load()
    control.spec.processes[:] = fresh.processes


async def _statuses(control: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for addr in control.spec.metaroot_addrs():
        try:
            found[addr] = await control.rpc.call(addr, MetarootStatusRequest(), timeout=1.0)
        except Exception:  # noqa: BLE001, S112 - down, paused or removed: not answering
            continue
    return found


async def _leader(control: Any) -> Any | None:
    leaders = [st for st in (await _statuses(control)).values()
               if st.is_leader and not st.removed]
    return max(leaders, key=lambda st: st.term) if leaders else None


async def inject(control: Any, params: dict) -> dict:
    rc, out, err = await _nokv(control, "metaroot", "add-peer", "--wait",
                               str(params.get("wait", SWAP_WAIT)), timeout=params.get("wait", SWAP_WAIT))
    await trio.to_thread.run_sync(_sync_spec, control)
    pending = control.__dict__.setdefault("metaroot_swaps", [])
    if rc != 0 or out is None:
        pending.append(None)
        return {"skipped": f"add-peer failed (exit {rc}): {err}"}
    pending.append(out["peer_id"])
    return {"added": out["name"], "peer_id": out["peer_id"], "voters": out["voters"]}


async def heal(control: Any, params: dict) -> dict:
    pending = control.__dict__.get("metaroot_swaps") or [None]
    added = pending.pop(0)  # this window's (windows of one fault never overlap)
    if added is None:
        return {"skipped": "no peer was added", "valid": True, "outcome": "skipped"}
    leader = await _leader(control)
    voters = sorted(leader.voters) if leader else []
    if leader is None or added not in voters:
        return {"outcome": f"no leader lists metaroot-{added} a voter (voters {voters})",
                "valid": False}
    if params.get("remove") == "leader" and leader.node_id != added:
        victim = leader.node_id
    else:
        others = [v for v in voters if v != added and v != leader.node_id] or \
                 [v for v in voters if v != added]
        victim = random.Random(params.get("pick", 0)).choice(others)
    out: dict[str, Any] = {"added": added, "removed": victim,
                           "removed_was_leader": victim == leader.node_id}
    rc, reply, err = await _nokv(control, "metaroot", "remove-peer", str(victim), "--wait",
                                 str(params.get("wait", SWAP_WAIT)),
                                 timeout=params.get("wait", SWAP_WAIT))
    await trio.to_thread.run_sync(_sync_spec, control)
    if rc != 0 or reply is None:
        out.update(outcome=f"remove-peer {victim} failed (exit {rc}): {err}", valid=False)
        return out
    out["voters"] = reply["voters"]
    settled = await _settle(control, expect=len(voters) - 1, victim=victim)
    out.update(settled)
    problems = [settled["problem"]] if settled.get("problem") else []
    retired = [p.retired for p in control.spec.of_kind("metaroot") if p.node_id == victim]
    if retired != [True]:
        problems.append(f"cluster.json does not record metaroot-{victim} retired")
    out.update(outcome="swapped" if not problems else "; ".join(problems), valid=not problems)
    return out


async def _settle(control: Any, expect: int, victim: int) -> dict:
    """Wait until a leader shows `expect` voters without `victim` and every coordinator
    answers a STRONG route read."""
    deadline = trio.current_time() + SETTLE_TIMEOUT
    last = "no metaroot leader"
    while True:
        leader = await _leader(control)
        if leader is not None:
            if victim in leader.voters or len(leader.voters) != expect:
                last = f"the leader lists voters {sorted(leader.voters)}"
            else:
                failing = []
                for addr in control.coordinator_addrs():
                    try:
                        reply = await control.rpc.call(
                            addr, GetRegionByKeyRequest(b"", Freshness.STRONG), timeout=2.0)
                        if reply.descriptor is None:
                            failing.append(f"{addr}: no descriptor")
                    except Exception as exc:  # noqa: BLE001 - judged below
                        failing.append(f"{addr}: {type(exc).__name__}: {exc}"[:160])
                if not failing:
                    return {"leader": leader.node_id, "leader_voters": sorted(leader.voters)}
                last = "STRONG route reads failed: " + "; ".join(failing)
        if trio.current_time() >= deadline:
            return {"problem": f"not settled within {SETTLE_TIMEOUT:g}s: {last}"}
        await trio.sleep(POLL)
