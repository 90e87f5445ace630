"""`nokv kv | route | regions | stores | transitions | execution | diag | admin | failpoint`.

Owns: where a command goes (`Target`: a local cluster directory or coordinator addresses,
with the operator's credential), running a command's handler against it with every failure
turned into one line (`run_handler`), and these commands' requests, output and exit status.
`nokv regions digest` is `nokvpy.cli.digest_cmd` (which runs through `run_handler`); this
module never imports it.

`nokv kv txn` takes its compares and operations as small phrases (`nokv kv txn --help`,
nokvpy.cli.flags.TXN_SYNTAX): keys and values in them are UTF-8 text or 0x-hex, quoted as in
a shell when they hold spaces.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from nokvpy.cli import admin_wait
from nokvpy.cli.common import CliError, one_line_errors, remote_text
from nokvpy.cli.output import kv_lines, parse_key, plain, print_json, readable, show_key, table
from nokvpy.client import Client, Compare, Op
from nokvpy.client.errors import RouteRejectedError, UnavailableError
from nokvpy.cluster.local import ClusterError, LocalCluster
from nokvpy.protocol import Freshness, RootToken
from nokvpy.protocol.admin import FailpointClearRequest, FailpointListRequest, FailpointSetRequest
from nokvpy.protocol.coordinator_rpc import (
    DiagnosticsRequest,
    ListStoresRequest,
    ListTransitionsRequest,
    ScanRegionsRequest,
)
from nokvpy.protocol.store_rpc import (
    AdminRequest,
    ExecutionStatusRequest,
    ReadMode,
    TxnCompare,
    TxnGetResult,
    TxnOp,
)
from nokvpy.rpc import Identity, RemoteError, RpcTimeoutError, RpcUnavailableError

FRESHNESS = {"strong": Freshness.STRONG, "bounded": Freshness.BOUNDED,
             "best-effort": Freshness.BEST_EFFORT}
READ_MODES = {"linearizable": ReadMode.LINEARIZABLE, "follower": ReadMode.FOLLOWER,
              "stale": ReadMode.BOUNDED_STALE}


class Target:
    """Where the command goes: a local cluster directory or explicit coordinator addresses."""

    def __init__(self, args):
        self.spec = None
        self.cluster: LocalCluster | None = None
        self.dir = args.dir
        if args.coordinator:
            self.coordinators = [a.strip() for a in args.coordinator.split(",") if a.strip()]
            self.cluster_id = os.environ.get("NOKV_CLUSTER_ID", "nokv")
            secret = os.environ.get("NOKV_CLUSTER_SECRET", "")
        else:
            try:
                self.cluster = LocalCluster(Path(args.dir))
                self.spec = self.cluster.load()
            except ClusterError as exc:
                hint = "" if self.cluster.exists() else " (or pass --coordinator HOST:PORT)"
                raise CliError(f"{exc}{hint}") from None
            self.coordinators = self.spec.coordinator_addrs()
            self.cluster_id = self.spec.cluster_id
            secret = self.spec.secret
        self.secret = secret.encode() if secret else None
        self.timeout = args.timeout

    def identity(self) -> Identity:
        return Identity(self.cluster_id, "admin", 0, self.secret)

    def client(self) -> Client:
        # the CLI is the operator's tool: it holds the cluster secret and acts as admin
        return Client(self.coordinators, cluster_id=self.cluster_id, secret=self.secret,
                      timeout=self.timeout, role="admin")

    def process_addr(self, name: str) -> str:
        return self.resolve(name)[1]

    def resolve(self, name: str) -> tuple[str, str]:
        """(process name, address) of a process named `store-2`, `2` (a store) or HOST:PORT."""
        if ":" in name:
            if self.spec is not None:
                for proc in self.spec.processes:
                    if proc.address == name:
                        return proc.name, name
            return name, name
        if self.spec is None:
            raise CliError(f"cannot resolve process {name!r} without --dir; pass HOST:PORT")
        if name.isdigit():
            name = f"store-{name}"
        try:
            return name, self.spec.get(name).address
        except ClusterError as exc:
            raise CliError(str(exc)) from None

    def not_running(self, name: str) -> bool:
        """True when `name` is a process of the local cluster that has no live pid."""
        if self.cluster is None or self.spec is None:
            return False
        if name not in {p.name for p in self.spec.processes}:
            return False
        return self.cluster.pid(name) is None

    async def call_process(self, client: Client, name: str, request: Any) -> Any:
        """One request to one named process, with a one-line error that says why it failed."""
        name, addr = self.resolve(name)
        if self.not_running(name):
            raise CliError(f"{name} is not running (killed or stopped); start it with "
                           f"`nokv cluster restart {name} --dir {self.dir}`")
        try:
            return await client.rpc.call(addr, request, timeout=self.timeout)
        except RpcTimeoutError:
            raise CliError(f"{name} ({addr}) did not answer within {self.timeout:g}s "
                           "(paused or overloaded?)") from None
        except RpcUnavailableError as exc:
            raise CliError(f"{name} ({addr}) is unreachable: {exc.reason}") from None
        except RemoteError as exc:
            raise CliError(f"{name} refused the request: {remote_text(exc)}") from None

    def explain_unavailable(self, exc: UnavailableError) -> str:
        if self.spec is not None and self.cluster is not None:
            down = [p.name for p in self.spec.of_kind("coordinator") if self.cluster.pid(p.name) is None]
            if len(down) == len(self.spec.of_kind("coordinator")):
                return (f"the cluster in {self.cluster.root} is not running ({', '.join(down)} "
                        f"down); start it with `nokv cluster up --dir {self.dir}`")
        text = str(exc)
        if "cluster_mismatch" in text or "secret_mismatch" in text:
            text += "; set NOKV_CLUSTER_ID and NOKV_CLUSTER_SECRET to the cluster's (see cluster.json)"
        return text


def run(args) -> int:
    return run_handler(args, HANDLERS[args.command])


def run_handler(args, handler: Callable[..., Awaitable[int]]) -> int:
    """Run `handler(args, target, client)` (async, returns the exit status) against the
    target of `args`; the client is closed after, and every failure is one line (CliError)."""
    target = Target(args)
    return trio.run(_run, args, target, handler)


async def _run(args, target: Target, handler: Callable[..., Awaitable[int]]) -> int:
    client = target.client()
    try:
        with one_line_errors(target.explain_unavailable):
            return await handler(args, target, client)
    finally:
        await client.aclose()


def key_arg(text: str) -> bytes:
    try:
        return parse_key(text)
    except ValueError as exc:
        raise CliError(str(exc)) from None


async def cmd_kv(args, target: Target, client: Client) -> int:
    action = args.action
    if action == "get":
        value = await client.get(key_arg(args.key), read_mode=READ_MODES[args.read])
        if args.json:
            print_json({"key": args.key, "value": None if value is None else show_key(value),
                        "found": value is not None})
        elif value is None:
            print("(not found)")
        else:
            print(show_key(value))
        return 0 if value is not None or args.json else 1
    if action == "put":
        index = await client.put(key_arg(args.key), key_arg(args.value), lease=args.lease)
        _done(args, {"key": args.key, "applied_index": index}, "OK")
        return 0
    if action == "delete":
        index = await client.delete(key_arg(args.key))
        _done(args, {"key": args.key, "applied_index": index}, "OK")
        return 0
    if action == "scan":
        pairs = await client.scan(key_arg(args.start), key_arg(args.end), args.limit)
        rows = [{"key": show_key(k), "value": show_key(v)} for k, v in pairs]
        next_key = show_key(pairs.next_key) if pairs.more else None
        if args.json:
            print_json({"pairs": rows, "more": pairs.more, "next_key": next_key})
        else:
            print(table(rows, ["key", "value"]))
            if pairs.more:
                print(f"(limit {args.limit} reached: more keys from {next_key}; raise --limit "
                      "or scan from there)", file=sys.stderr)
        return 0
    if action == "txn":
        return await _txn(args, client)
    if action == "delete-range":
        return await _delete_range(args, client)
    expected = None if args.expected == "-" else key_arg(args.expected)
    new = None if args.new == "-" else key_arg(args.new)
    ok, current = await client.compare_and_swap(key_arg(args.key), expected, new)
    result = {"key": args.key, "succeeded": ok,
              "current": None if current is None else show_key(current)}
    if args.json:
        print_json(result)
    else:
        print("OK" if ok else f"FAILED: current value is {result['current'] or '(absent)'}")
    return 0 if ok else 1


def parse_compare(text: str) -> TxnCompare:
    """One `--if` phrase (`nokv kv txn --help`) as a compare; CliError when it is not one."""
    words = _words("--if", text)
    try:
        if len(words) == 2 and words[1] in ("exists", "missing"):
            key = key_arg(words[0])
            return Compare.exists(key) if words[1] == "exists" else Compare.missing(key)
        if len(words) == 3 and words[1] in ("==", "!="):
            return Compare.value(key_arg(words[0]), words[1], key_arg(words[2]))
        if len(words) == 4 and words[1] == "mod" and words[2] in ("==", "!="):
            index, _, region = words[3].partition("@")
            if index.isdigit() and (not region or region.isdigit()):
                got = TxnGetResult(b"", None, int(index), int(region or 0))
                return Compare.mod(key_arg(words[0]), words[2], got)
    except CliError as exc:
        raise CliError(f"bad --if {text!r}: {exc}") from None
    raise CliError(f"bad --if {text!r}: expected 'KEY == VALUE', 'KEY != VALUE', 'KEY exists', "
                   "'KEY missing' or 'KEY mod == INDEX[@REGION]' (see `nokv kv txn --help`)")


def parse_op(flag: str, text: str) -> TxnOp:
    """One `--then` / `--else` phrase as an operation."""
    words = _words(flag, text)
    verb = words[0].lower() if words else ""
    try:
        if verb == "put" and len(words) == 3:
            return Op.put(key_arg(words[1]), key_arg(words[2]))
        if verb in ("delete", "get") and len(words) == 2:
            return Op.delete(key_arg(words[1])) if verb == "delete" else Op.get(key_arg(words[1]))
    except CliError as exc:
        raise CliError(f"bad {flag} {text!r}: {exc}") from None
    raise CliError(f"bad {flag} {text!r}: expected 'put KEY VALUE', 'delete KEY' or 'get KEY' "
                   "(see `nokv kv txn --help`)")


def _words(flag: str, text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise CliError(f"bad {flag} {text!r}: {exc}") from None


async def _txn(args, client: Client) -> int:
    compares = [parse_compare(t) for t in args.conditions]
    success = [parse_op("--then", t) for t in args.then_ops]
    failure = [parse_op("--else", t) for t in args.else_ops]
    if not (compares or success or failure):
        raise CliError("nothing to do: give --if, --then or --else (see `nokv kv txn --help`)")
    result = await client.txn(compares, success, failure)
    gets = [{"key": show_key(g.key), "found": g.value is not None,
             "value": None if g.value is None else show_key(g.value),
             "mod_index": g.mod_index, "mod_region": g.mod_region} for g in result.gets]
    branch = "then" if result.succeeded else "else"
    if args.json:
        print_json({"succeeded": result.succeeded, "branch": branch,
                    "applied_index": result.applied_index, "gets": gets})
    else:
        print(f"{'OK' if result.succeeded else 'FAILED'}: the --{branch} branch ran "
              f"(applied at index {result.applied_index})")
        if gets:
            print(table([{"get": g["key"], "value": g["value"] if g["found"] else "(not found)",
                          "mod": f"{g['mod_index']}@{g['mod_region']}" if g["found"] else "-"}
                         for g in gets], ["get", "value", "mod"]))
    return 0 if result.succeeded else 1


async def _delete_range(args, client: Client) -> int:
    start, end = key_arg(args.start), key_arg(args.end)
    result = await client.delete_range(start, end, args.limit)
    next_key = show_key(result.next_key) if result.more else None
    regions = [{"region_id": r.region_id, "start": show_key(r.start),
                "end": show_key(r.end), "deleted": r.deleted,
                "applied_index": r.applied_index} for r in result.regions]
    if args.json:
        print_json({"deleted": result.deleted, "more": result.more, "next_key": next_key,
                    "regions": regions})
        return 0
    parts = ", ".join(f"region {r['region_id']}: {r['deleted']}" for r in regions)
    print(f"deleted {result.deleted} key{'' if result.deleted == 1 else 's'} ({parts})")
    if result.more:
        print(f"(limit {args.limit} reached: more keys from {next_key}; run again to delete "
              "them)", file=sys.stderr)
    return 0


def _done(args, data: dict, text: str) -> None:
    if args.json:
        print_json(data)
    else:
        print(text)


async def cmd_route(args, target: Target, client: Client) -> int:
    token = RootToken(0, args.required_root_token) if args.required_root_token is not None else None
    try:
        reply = await client.route(key_arg(args.key), FRESHNESS[args.freshness],
                                   args.max_root_lag, token)
    except RouteRejectedError as exc:
        if args.json:
            print_json({"rejected": True, "reason": exc.reason, "witness": exc.witness,
                        "message": readable(str(exc))})
            return 1
        raise CliError(f"route rejected ({exc.reason}): {exc}; witness: "
                       f"{witness_summary(exc.witness)}") from None
    d = reply.descriptor
    if args.json:
        print_json({"rejected": False, "descriptor": d, "leader_store_id": reply.leader_store_id,
                    "witness": reply.witness})
        return 0
    if d is None:
        print("region: (not found)")
    else:
        print(kv_lines({"region": d.region_id, "range": f"[{show_key(d.start_key) or '-inf'}, "
                        f"{show_key(d.end_key) or '+inf'})", "epoch": str(d.epoch),
                        "peers": ", ".join(f"store-{p.store_id}/peer-{p.peer_id}"
                                           + (" (learner)" if p.learner else "") for p in d.peers),
                        "leader": f"store-{reply.leader_store_id}" if reply.leader_store_id else "-",
                        "revision": d.revision}))
    print("-- witness")
    print(kv_lines(plain(reply.witness)))
    return 0


def witness_summary(witness: Any) -> str:
    """A freshness witness on one line: tokens, lag, class, catch-up and degraded mode."""
    if not witness:
        return "-"
    w = plain(witness)

    def token(t: Any) -> str:
        return f"{t.get('term', '?')}/{t.get('index', '?')}" if isinstance(t, dict) else str(t)

    return (f"served {token(w.get('served_root_token'))}, current {token(w.get('current_root_token'))}, "
            f"lag {w.get('root_lag')}, {w.get('serving_class')}, catch-up {w.get('catch_up_state')}, "
            f"{w.get('degraded_mode')}")


async def cmd_regions(args, target: Target, client: Client) -> int:
    reply = await client.call_coordinator(ScanRegionsRequest(b"", b"", 100000, Freshness.BEST_EFFORT))
    leaders = reply.leaders or {}
    rows = [{"region": d.region_id, "start": show_key(d.start_key) or "-inf",
             "end": show_key(d.end_key) or "+inf", "epoch": str(d.epoch),
             "peers": [f"{p.store_id}{'L' if p.learner else ''}" for p in d.peers],
             "leader": leaders.get(d.region_id, 0) or "-", "revision": d.revision}
            for d in reply.descriptors]
    if args.json:
        print_json({"regions": reply.descriptors, "leaders": leaders, "witness": reply.witness})
    else:
        print(table(rows, ["region", "start", "end", "epoch", "peers", "leader", "revision"]))
    return 0


async def cmd_stores(args, target: Target, client: Client) -> int:
    reply = await client.call_coordinator(ListStoresRequest())
    if args.json:
        print_json(reply.stores)
    else:
        print(table([plain(s) for s in reply.stores]))
    return 0


async def cmd_transitions(args, target: Target, client: Client) -> int:
    reply = await client.call_coordinator(ListTransitionsRequest(include_history=True))
    entries = [plain(e) for e in reply.entries]
    if args.action == "list":
        if args.json:
            print_json({"token": reply.token, "transitions": entries})
        else:
            cols = ["transition_id", "kind", "phase", "region_ids", "source_token"]
            print(table([{c: e.get(c) for c in cols} for e in entries], cols))
        return 0
    match = [e for e in entries if e.get("transition_id") == args.id]
    records = [plain(r) for r in (getattr(reply, "recovery_records", None) or [])
               if getattr(r, "transition_id", "") == args.id]
    if not match and not records:
        raise CliError(f"no transition {args.id!r} known to the coordinator")
    # the pending (or latest) entry first; earlier history entries of the same id after it
    story = dict(match[0]) if match else {"transition_id": args.id}
    if len(match) > 1:
        story["earlier"] = match[1:]
    # DESIGN 7: every compensation / reconciliation with its original failure evidence
    story["recovery_records"] = records
    # what stores know about it: lifecycle, outbox, last error
    if target.spec is not None:
        story["stores"] = {}
        for proc in target.spec.of_kind("store"):
            if target.not_running(proc.name):
                story["stores"][proc.name] = {"unreachable": "not running"}
                continue
            try:
                st = await client.rpc.call(proc.address, ExecutionStatusRequest(0, args.id), timeout=2.0)
                tracked = st.body.get("transitions", {}).get(args.id)
                if tracked:
                    story["stores"][proc.name] = tracked
            except Exception as exc:  # noqa: BLE001 - a story with a hole is still a story
                story["stores"][proc.name] = {"unreachable": type(exc).__name__}
    if args.json:
        print_json(story)
    else:
        print(kv_lines(story))
    return 0


async def cmd_execution(args, target: Target, client: Client) -> int:
    reply = await target.call_process(client, args.store, ExecutionStatusRequest())
    if args.json:
        print_json(reply.body)
    else:
        print(kv_lines(reply.body))
    return 0


async def cmd_diag(args, target: Target, client: Client) -> int:
    reply = await client.call_coordinator(DiagnosticsRequest())
    if args.json:
        print_json(reply.body)
    else:
        print(kv_lines(reply.body))
    return 0


async def cmd_admin(args, target: Target, client: Client) -> int:
    """Send the request to the region's leader store, print its reply, then (unless
    --no-wait) wait for the end state it causes and print that (admin_wait)."""
    action = args.action
    if action == "split":
        key = key_arg(args.key)
        route = await client.route(key, Freshness.BOUNDED)
        if route.descriptor is None:
            raise CliError("no region holds that key")
        req = AdminRequest("split", route.descriptor.region_id, split_key=key)
        # no leader known yet: any replica forwards the request to its leader
        leader = route.leader_store_id or route.descriptor.voters()[0].store_id
        goal = admin_wait.Goal("split", route.descriptor.region_id, split_key=key)
    elif action == "merge":
        req = AdminRequest("merge", args.left, other_region_id=args.right)
        leader = await _leader_of(client, args.left)
        goal = await admin_wait.merge_goal(client, args.left, args.right)
    elif action == "tombstone":
        req = AdminRequest("tombstone", args.region)
        leader = await _leader_of(client, args.region)
        goal = admin_wait.Goal("tombstone", args.region)
    else:
        op = action.replace("-", "_")
        req = AdminRequest(op, args.region, store_id=args.store)
        leader = await _leader_of(client, args.region)
        goal = admin_wait.Goal(action, args.region, store_id=args.store)
    wait = not args.no_wait
    addr = await client._store_addr(leader)
    reply = None
    no_answer = ""
    try:
        reply = await client.rpc.call(addr, req, timeout=target.timeout)
    except RpcTimeoutError:
        no_answer = f"{action} sent to store {leader} got no answer within {target.timeout:g}s"
        if not wait:
            raise CliError(f"{no_answer}; it may still complete (see `nokv transitions list`)") from None
    except RemoteError as exc:  # refused before anything was planned: reason and message only
        raise CliError(f"{action} refused by store {leader} ({exc.reason or exc.kind}): "
                       f"{readable(exc.message)}") from None
    if reply is not None:
        failed = plain(reply.outcome) in ("FAILED", "REJECTED")
        if args.json:
            if failed or not wait:
                print_json(reply if not wait else {"reply": reply, "end_state": None})
                return 1 if failed else 0
        elif failed:
            raise CliError(f"{action} {reply.outcome} at stage {reply.stage}: {reply.detail or '-'} "
                           f"(transition {reply.transition_id or '-'})")
        else:
            print(kv_lines(plain(reply)), flush=True)
            if not wait:
                return 0
    elif not args.json:
        print(f"reply  none: {no_answer}; waiting for the end state", flush=True)
    try:
        state = await admin_wait.wait_end_state(client, goal, spec=target.spec,
                                                not_running=target.not_running,
                                                timeout=args.wait_timeout)
    except CliError as exc:
        state = getattr(exc, "end_state", None)
        if state is not None:
            if args.json:
                print_json({"reply": reply, "end_state": state})
            else:
                print(admin_wait.end_state_text(state))
        if no_answer and state is not None:
            raise CliError(f"{no_answer}, and its end state was not reached within "
                           f"{args.wait_timeout:g}s: {'; '.join(state['missing'])}") from None
        raise
    if no_answer:
        state["notes"].insert(0, f"{no_answer}; the end state was reached anyway")
    if args.json:
        print_json({"reply": reply, "end_state": state})
    else:
        print(admin_wait.end_state_text(state))
    return 0


async def _leader_of(client: Client, region_id: int) -> int:
    reply = await client.call_coordinator(ScanRegionsRequest(b"", b"", 100000, Freshness.BEST_EFFORT))
    for d in reply.descriptors:
        if d.region_id == region_id:
            leader = (reply.leaders or {}).get(region_id, 0)
            return leader or d.voters()[0].store_id
    raise CliError(f"region {region_id} is not known to the coordinator")


async def cmd_failpoint(args, target: Target, client: Client) -> int:
    if args.action == "set":
        req: Any = FailpointSetRequest(args.name, args.spec)
    elif args.action == "clear":
        req = FailpointClearRequest(args.name)
    else:
        req = FailpointListRequest()
    reply = await target.call_process(client, args.process, req)
    if args.json:
        print_json(reply)
    else:
        name = target.resolve(args.process)[0]
        if args.action == "set":
            print(f"{name}: set {args.name} = {args.spec}")
        elif args.action == "clear":
            print(f"{name}: cleared {args.name or 'every failpoint'}")
        rows = [{"failpoint": k, "spec": v, "hits": reply.hits.get(k, 0)} for k, v in reply.active.items()]
        print(table(rows, ["failpoint", "spec", "hits"]))
    return 0


HANDLERS = {
    "kv": cmd_kv, "route": cmd_route, "regions": cmd_regions, "stores": cmd_stores,
    "transitions": cmd_transitions, "execution": cmd_execution, "diag": cmd_diag,
    "admin": cmd_admin, "failpoint": cmd_failpoint,
}
