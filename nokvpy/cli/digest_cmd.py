"""`nokv regions digest`: compare the replicas of every region by a digest of their data.

Asks every store for its RegionDigest answer and shows, per region, the replicas' applied
index, key count and digest, and whether they agree: `agree` (every voter at one applied
index with the same digest and key count), `lagging` (voters at different applied indexes:
ask again), `DIVERGED` (same applied index, different data), `incomplete` (a voter did not
answer) or `not compared` (a replica gave no digest, e.g. too large). Exit status 1 when a
region DIVERGED.

Owns: which stores are asked (`digest_stores`), the verdict of one region (`digest_verdict`,
pure), and the table and the `--json` answer (`regions`, `errors`, `diverged`). The target
and the one-line errors are `nokvpy.cli.data_cmd`'s (`Target`, `run_handler`); the parser
of `nokv regions` is `nokvpy.cli.main`'s. Never changes a replica and never fails on one
store that does not answer: that store is reported and the others are compared.
"""

from __future__ import annotations

from nokvpy.cli.common import remote_text
from nokvpy.cli.data_cmd import Target, run_handler
from nokvpy.cli.output import print_json, table
from nokvpy.client import Client
from nokvpy.protocol.coordinator_rpc import ListStoresRequest
from nokvpy.protocol.store_rpc import RegionDigest, RegionDigestRequest
from nokvpy.rpc import RemoteError, RpcTimeoutError, RpcUnavailableError


def run(args) -> int:
    return run_handler(args, cmd_regions_digest)


async def digest_stores(target: Target, client: Client) -> list[tuple[str, str]]:
    """(name, address) of every store: the local cluster's, else the coordinator's list."""
    if target.spec is not None:
        return [(p.name, p.address) for p in target.spec.of_kind("store")]
    reply = await client.call_coordinator(ListStoresRequest())
    return [(f"store-{s.store_id}", s.address) for s in sorted(reply.stores,
                                                               key=lambda s: s.store_id)]


def digest_verdict(replicas: list[tuple[str, int, RegionDigest]],
                   answered: set[int], store_names: dict[int, str]) -> tuple[str, str]:
    """(verdict, why) of one region from its replicas' digests (name, store id, digest):
    the voters are those of the newest descriptor a replica reports."""
    known = [r for r in replicas if r[2].note != "uninitialized"]
    if not known:
        return "incomplete", "no initialized replica"
    newest = max(known, key=lambda r: (r[2].epoch.version, r[2].epoch.conf_ver,
                                       r[2].applied_index))[2]
    by_store = {sid: d for _, sid, d in known}
    missing = [f"{store_names.get(s, f'store-{s}')}: "
               f"{'no initialized replica' if s in answered else 'no answer'}"
               for s in newest.voters if s not in by_store]
    if missing:
        return "incomplete", ", ".join(missing)
    voters = [by_store[s] for s in newest.voters]
    if len({d.applied_index for d in voters}) > 1:
        return "lagging", "voters at applied indexes " + ", ".join(
            str(d.applied_index) for d in voters)
    notes = [d.note for d in voters if d.note or not d.digest]
    if notes:
        return "not compared", notes[0] or "no digest"
    if len({(d.digest, d.key_count, d.epoch, d.start_key, d.end_key) for d in voters}) > 1:
        return "DIVERGED", f"different data at applied index {voters[0].applied_index}"
    return "agree", f"{len(voters)} voters at applied index {voters[0].applied_index}"


async def cmd_regions_digest(args, target: Target, client: Client) -> int:
    """Every store's RegionDigest answer, per region; exit status 1 when a region DIVERGED."""
    errors: dict[str, str] = {}
    replicas: dict[int, list[tuple[str, int, RegionDigest]]] = {}
    answered: set[int] = set()
    names: dict[int, str] = {}
    for name, addr in await digest_stores(target, client):
        if target.not_running(name):
            errors[name] = "not running"
            continue
        try:
            reply = await client.rpc.call(addr, RegionDigestRequest(), timeout=target.timeout)
        except RemoteError as exc:
            errors[name] = f"refused: {remote_text(exc)}"
            continue
        except (RpcTimeoutError, RpcUnavailableError) as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        answered.add(reply.store_id)
        names[reply.store_id] = name
        for d in reply.digests:
            replicas.setdefault(d.region_id, []).append((name, reply.store_id, d))
    regions = []
    for rid in sorted(replicas):
        verdict, why = digest_verdict(replicas[rid], answered, names)
        regions.append({"region": rid, "verdict": verdict, "why": why, "replicas": [
            {"store": name, "store_id": sid, "peer_id": d.peer_id,
             "voter": sid in d.voters, "applied_index": d.applied_index,
             "applied_term": d.applied_term, "epoch": str(d.epoch), "key_count": d.key_count,
             "byte_count": d.byte_count, "digest": d.digest.hex(), "note": d.note}
            for name, sid, d in sorted(replicas[rid], key=lambda r: r[1])]})
    diverged = [r["region"] for r in regions if r["verdict"] == "DIVERGED"]
    if args.json:
        print_json({"regions": regions, "errors": errors, "diverged": diverged})
    else:
        rows = []
        for r in regions:
            for i, rep in enumerate(r["replicas"]):
                rows.append({"region": r["region"] if i == 0 else "",
                             "verdict": r["verdict"] if i == 0 else "",
                             "store": rep["store"] + ("" if rep["voter"] else " (not voter)"),
                             "applied": rep["applied_index"], "keys": rep["key_count"],
                             "digest": rep["digest"][:12] or "-", "note": rep["note"]})
        print(table(rows, ["region", "verdict", "store", "applied", "keys", "digest", "note"]))
        counts: dict[str, int] = {}
        for r in regions:
            counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        noun = "region" if len(regions) == 1 else "regions"
        tally = ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) or "none"
        print(f"{len(regions)} {noun}: {tally}")
        for r in regions:
            if r["verdict"] != "agree":
                print(f"region {r['region']} {r['verdict']}: {r['why']}")
        for name, err in errors.items():
            print(f"{name}: {err}")
    return 1 if diverged else 0
