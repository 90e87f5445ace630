"""`nokv outbox list | retry | resolve STORE ...`: the operator path of a store's publish outbox.

A terminal event that root refused permanently is moved to the store's blocked table
(TERMINAL_BLOCKED) and stays there, keeping the store DEGRADED, until an operator decides:
`retry` puts it back into the outbox once the cause is fixed; `resolve --as published|
abandoned --reason TEXT` removes it for good and queues a RecoveryRecord of the decision for
root in the same local write (raftstore.outbox). The store refuses a request it cannot carry
out (no such blocked entry, no reason) with one line and exit status 1; nothing changes then.
"""

from __future__ import annotations

from typing import Any

import trio

from nokvpy.cli.data_cmd import Target
from nokvpy.cli.output import print_json, readable, table
from nokvpy.protocol.store_rpc import OutboxRequest


def run(args) -> int:
    target = Target(args)
    return trio.run(_run, args, target)


def request(args) -> OutboxRequest:
    if args.action == "retry":
        return OutboxRequest("retry", args.seq)
    if args.action == "resolve":
        return OutboxRequest("resolve", args.seq, args.resolution, args.reason)
    return OutboxRequest("list")


async def _run(args, target: Target) -> int:
    client = target.client()
    try:
        reply = await target.call_process(client, args.store, request(args))
    finally:
        await client.aclose()
    name = target.resolve(args.store)[0]
    body: dict[str, Any] = dict(reply.body)
    if args.json:
        print_json({"store": name, "action": reply.action, "detail": reply.detail, **body})
        return 0
    if reply.detail:
        print(f"{name}: {readable(reply.detail)}")
    print(summary(name, body))
    if args.action == "list":
        print(listing(name, body))
    return 0


def summary(name: str, body: dict[str, Any]) -> str:
    """One line: how many entries are blocked and pending, and the store's current state."""
    blocked, pending = body.get("blocked") or [], body.get("pending") or []
    state = body.get("current_state") or {}
    line = f"{name}: {len(blocked)} blocked, {len(pending)} pending"
    if state:
        line += f"; current state {state.get('state', '?')}"
        if state.get("message") and state.get("state") != "READY":
            line += f" ({readable(state['message'])})"
    return line


def listing(name: str, body: dict[str, Any]) -> str:
    blocked = [{"seq": b.get("seq"), "transition_id": b.get("transition_id") or "-",
                "event": b.get("event") or "-", "purpose": b.get("purpose", "-"),
                "role": b.get("role") or "-", "error": readable(b.get("error", ""))}
               for b in body.get("blocked") or []]
    pending = [{"seq": p.get("seq"), "transition_id": p.get("transition_id") or "-",
                "event": p.get("event") or "-", "purpose": p.get("purpose"),
                "attempts": p.get("attempts"), "retry_in": p.get("retry_in"),
                "last_error": readable(p.get("last_error") or "") or "-"}
               for p in body.get("pending") or []]
    lines = ["-- blocked (root refused them permanently; kept until an operator decides)",
             table(blocked, ["seq", "transition_id", "event", "purpose", "role", "error"]),
             "-- pending (the publisher is still taking them to root)",
             table(pending, ["seq", "transition_id", "event", "purpose", "attempts",
                             "retry_in", "last_error"])]
    if blocked:
        lines.append(f"next: `nokv outbox retry {name} SEQ` once the cause is fixed, or "
                     f"`nokv outbox resolve {name} SEQ --as published|abandoned --reason TEXT`")
    return "\n".join(lines)
