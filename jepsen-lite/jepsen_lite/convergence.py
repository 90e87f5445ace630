"""The end-of-run replica convergence check: do the voters of every region hold the same data?

The other checkers see only what clients read, so a replica whose state silently diverged (a
follower that applied a damaged entry, a snapshot installed wrong) goes unnoticed unless it
later leads and serves the wrong value. This check compares the replicas themselves, as
etcd's robustness tests compare their members' HashKV: every store answers
``RegionDigestRequest`` with, per hosted replica, its applied index and a digest of its
applied key-value state read with it (raftstore.status ``region_digest``).

Owns (pure, no I/O): the verdict of one region over the stores' answers
(:func:`judge_region`: ``agree``, ``diverged``, ``lagging``, ``waiting``, ``unchecked``) and
of a whole run over a series of polls (:func:`judge_polls`), and the plain view of one
``RegionDigest`` (:func:`digest_view`). One async function, :func:`check_convergence`, asks
every live store through a control object (``names("store")``, ``node_id``, ``alive``,
``paused``, ``address``, ``rpc``; see :class:`jepsen_lite.control.ClusterControl`) again and
again, level-triggered, until every region is settled or a deadline passes.

The rules: a region's voters are those of the newest descriptor a replica reports (highest
epoch, then applied index). The region is judged once every voter reports the SAME applied
index (until then it is ``lagging``, or ``waiting`` while a voter's store is down, does not
answer, or hosts no initialized replica); then every voter must report the same digest, key
count, epoch and range (``agree``), else it is ``diverged``: a violation, naming the region,
the stores, their applied indexes and key counts. A replica that answered no digest (a region
too large to digest, a read error) leaves the region ``unchecked``. A region settled in one
poll keeps that verdict; the run is INVALID with any ``diverged`` region, ``unknown`` when a
region never reached a common applied index before the deadline (with the reason) or was
unchecked, valid otherwise. Learners and replicas outside the voter set are not compared.
Never changes the cluster and never records history events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import trio

from nokvpy.protocol.store_rpc import RegionDigest, RegionDigestRequest

CONVERGENCE_TIMEOUT = 20.0  # seconds to wait for every region's voters to reach one index
POLL_INTERVAL = 0.5
RPC_TIMEOUT = 10.0  # one store's answer (it digests its regions one after another)
SETTLED = ("agree", "diverged", "unchecked")

# A store's view, as the collector builds it and the judges read it:
#   {"name": str, "live": bool, "error"?: str, "digests": {region id: digest_view(...)}}
Views = Mapping[int, Mapping[str, Any]]


def digest_view(d: RegionDigest) -> dict:
    """A RegionDigest as plain data (results.json): the digest in hex."""
    return {
        "region_id": d.region_id, "peer_id": d.peer_id, "applied_index": d.applied_index,
        "applied_term": d.applied_term, "epoch": [d.epoch.version, d.epoch.conf_ver],
        "key_count": d.key_count, "byte_count": d.byte_count, "digest": d.digest.hex(),
        "note": d.note, "start": d.start_key.hex(), "end": d.end_key.hex(),
        "voters": list(d.voters), "learners": list(d.learners),
    }


def short(digest_hex: str) -> str:
    return digest_hex[:12] if digest_hex else "-"


def _replica(view: Mapping) -> dict:
    return {"applied_index": view.get("applied_index"), "key_count": view.get("key_count"),
            "digest": short(view.get("digest", "")), "epoch": list(view.get("epoch") or []),
            **({"note": view["note"]} if view.get("note") else {})}


def judge_region(rid: int, views: Views) -> dict | None:
    """The verdict on region ``rid`` from one poll of every store (None: no live store reports
    the region). ``{"region", "state", "reason", "applied_index", "voters", "replicas"}``,
    ``replicas`` keyed by store name."""
    names = {sid: v.get("name") or f"store-{sid}" for sid, v in views.items()}
    reports: dict[int, Mapping] = {}
    for sid, view in views.items():
        got = (view.get("digests") or {}).get(rid) if view.get("live") else None
        if got is not None:
            reports[sid] = got
    if not reports:
        return None
    out: dict[str, Any] = {"region": rid, "applied_index": None,
                           "replicas": {names[sid]: _replica(r) for sid, r in sorted(reports.items())}}
    initialized = [r for r in reports.values() if r.get("note") != "uninitialized"]
    if not initialized:
        return {**out, "state": "waiting", "voters": [],
                "reason": "no replica is initialized yet"}
    newest = max(initialized, key=lambda r: (*(r.get("epoch") or [0, 0]),
                                             r.get("applied_index", 0)))
    voters = sorted(newest.get("voters") or [])
    out["voters"] = [names.get(s, f"store-{s}") for s in voters]
    missing = []
    for sid in voters:
        view = views.get(sid)
        name = names.get(sid, f"store-{sid}")
        if view is None:
            missing.append(f"{name}: unknown store")
        elif not view.get("live"):
            missing.append(f"{name}: not live")
        elif view.get("error"):
            missing.append(f"{name}: no answer ({view['error']})")
        elif sid not in reports:
            missing.append(f"{name}: hosts no replica")
        elif reports[sid].get("note") == "uninitialized":
            missing.append(f"{name}: replica not initialized")
    if missing:
        return {**out, "state": "waiting", "reason": "; ".join(missing)}
    indexes = {names[sid]: reports[sid].get("applied_index") for sid in voters}
    if len(set(indexes.values())) > 1:
        return {**out, "state": "lagging",
                "reason": "applied indexes " + ", ".join(f"{n} {i}" for n, i in indexes.items())}
    out["applied_index"] = next(iter(indexes.values()))
    unchecked = [f"{names[sid]}: {reports[sid].get('note') or 'no digest'}" for sid in voters
                 if reports[sid].get("note") or not reports[sid].get("digest")]
    if unchecked:
        return {**out, "state": "unchecked", "reason": "; ".join(unchecked)}
    groups: dict[tuple, list[int]] = {}
    for sid in voters:
        r = reports[sid]
        state = (r.get("digest"), r.get("key_count"), tuple(r.get("epoch") or ()),
                 r.get("start"), r.get("end"))
        groups.setdefault(state, []).append(sid)
    if len(groups) == 1:
        return {**out, "state": "agree",
                "reason": f"{len(voters)} voters at applied index {out['applied_index']}, "
                          f"{reports[voters[0]].get('key_count')} keys, digest "
                          f"{short(reports[voters[0]].get('digest', ''))}"}
    ranges_differ = len({state[2:] for state in groups}) > 1
    parts = []
    for state, sids in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[1])):
        what = f"{state[1]} keys, digest {short(state[0] or '')}"
        if ranges_differ:
            what += f", epoch {list(state[2])}, range [{state[3]}, {state[4]})"
        parts.append(f"{', '.join(names[s] for s in sids)} ({what})")
    return {**out, "state": "diverged",
            "reason": f"region {rid} diverged at applied index {out['applied_index']}: "
                      + " vs ".join(parts)}


def judge_poll(views: Views) -> dict[int, dict]:
    """Every region some live store reports, judged on one poll."""
    rids = sorted({rid for v in views.values() if v.get("live")
                   for rid in (v.get("digests") or {})})
    out = {}
    for rid in rids:
        verdict = judge_region(rid, views)
        if verdict is not None:
            out[rid] = verdict
    return out


def judge_polls(polls: Sequence[Views], *, final: bool = True, timeout: float | None = None,
                elapsed: float | None = None) -> dict:
    """The convergence check over a series of polls (oldest first). A region is settled by
    the first poll that finds its voters at one applied index (``agree``, ``diverged`` or
    ``unchecked``) and keeps that verdict; regions of the last poll never settled are
    ``unsettled`` (with the last poll's reason). ``final``: no poll follows (the deadline
    passed); otherwise ``done`` says whether polling may stop (nothing unsettled).

    ``valid`` False with any diverged region; else ``"unknown"`` when a region is unsettled
    (final) or unchecked, or no store reported any region; else True."""
    settled: dict[int, dict] = {}
    last: dict[int, dict] = {}
    for views in polls:
        last = judge_poll(views)
        for rid, verdict in last.items():
            if rid not in settled and verdict["state"] in SETTLED:
                settled[rid] = verdict
    unsettled = {rid: v for rid, v in last.items() if rid not in settled}
    diverged = [v for _, v in sorted(settled.items()) if v["state"] == "diverged"]
    unchecked = {rid: v for rid, v in sorted(settled.items()) if v["state"] == "unchecked"}
    agreed = sum(1 for v in settled.values() if v["state"] == "agree")
    regions = len(set(settled) | set(last))
    within = f" within {timeout:g}s" if timeout is not None else ""
    after = f" (after {elapsed:.1f}s)" if elapsed is not None else ""
    if diverged:
        valid: Any = False
        note = diverged[0]["reason"]
        if len(diverged) > 1:
            note += f"; {len(diverged) - 1} more diverged region(s)"
    elif unsettled and final:
        valid = "unknown"
        rid, v = next(iter(sorted(unsettled.items())))
        note = (f"region {rid} never reached a common applied index{within}: {v['reason']}"
                + (f"; {len(unsettled) - 1} more region(s) unsettled" if len(unsettled) > 1
                   else ""))
    elif unchecked:
        valid = "unknown"
        rid, v = next(iter(unchecked.items()))
        note = f"region {rid} not compared: {v['reason']}"
    elif not regions:
        valid = "unknown"
        note = "no store reported any region" + (
            "" if not polls else f" ({_errors(polls[-1]) or 'no live store'})")
    else:
        valid = True
        note = (f"{agreed} region{'s' if agreed != 1 else ''}: every voter holds the same data "
                f"(digest and key count) at the same applied index{after}")
    return {
        "valid": valid,
        "done": not unsettled or final,
        "note": note,
        "regions": regions,
        "agreed": agreed,
        "diverged": diverged,
        "unsettled": {str(rid): v["reason"] for rid, v in unsettled.items()},
        "unchecked": {str(rid): v["reason"] for rid, v in unchecked.items()},
        "settled": {str(rid): {"state": v["state"], "applied_index": v["applied_index"],
                               "replicas": v["replicas"]} for rid, v in sorted(settled.items())},
        "polls": len(polls),
    }


def _errors(views: Views) -> str:
    return "; ".join(f"{v.get('name')}: {v['error'] if v.get('error') else 'not live'}"
                     for v in views.values() if v.get("error") or not v.get("live"))


async def collect_digests(control: Any, timeout: float = RPC_TIMEOUT) -> dict[int, dict]:
    """One poll: every store's RegionDigest answer as a view keyed by store id (a dead or
    paused store is not asked: ``live`` False; a failed call is the view's ``error``)."""
    paused = control.paused()
    views: dict[int, dict] = {}
    for name in control.names("store"):
        view: dict[str, Any] = {"name": name, "live": control.alive(name) and name not in paused}
        if view["live"]:
            try:
                reply = await control.rpc.call(control.address(name), RegionDigestRequest(),
                                               timeout=timeout)
                view["digests"] = {d.region_id: digest_view(d) for d in reply.digests}
            except Exception as exc:  # noqa: BLE001 - reported in the view
                view["error"] = f"{type(exc).__name__}: {exc}"[:200]
        views[control.node_id(name)] = view
    return views


async def check_convergence(control: Any, timeout: float = CONVERGENCE_TIMEOUT,
                            interval: float = POLL_INTERVAL) -> dict:
    """Poll every live store's digests until every region is settled (:func:`judge_polls`)
    or ``timeout`` seconds passed; the ``convergence`` check. Only the polls that settled a
    region, and the last one, are kept for the verdict."""
    start = trio.current_time()
    kept: list[dict[int, dict]] = []  # the polls that settled some region
    latest: dict[int, dict] | None = None
    settled: set[int] = set()
    polls = 0
    while True:
        elapsed = trio.current_time() - start
        views = await collect_digests(
            control, timeout=max(1.0, min(RPC_TIMEOUT, timeout - elapsed)))
        polls += 1
        newly = {rid for rid, v in judge_poll(views).items()
                 if v["state"] in SETTLED and rid not in settled}
        if newly:
            settled |= newly
            kept.append(views)
            latest = None
        else:
            latest = views
        elapsed = trio.current_time() - start
        final = elapsed >= timeout
        check = judge_polls(kept + ([latest] if latest is not None else []), final=final,
                            timeout=timeout, elapsed=elapsed)
        if check["done"]:
            check["polls"] = polls
            check["elapsed_s"] = round(elapsed, 3)
            return check
        await trio.sleep(min(interval, max(0.0, timeout - elapsed)))


__all__ = [
    "CONVERGENCE_TIMEOUT",
    "check_convergence",
    "collect_digests",
    "digest_view",
    "judge_poll",
    "judge_polls",
    "judge_region",
]
