"""`nokv lease grant | keep-alive | revoke | list`.

Owns: the lease commands' arguments and output (`--json` for scripts). `keep-alive` sends one
keep-alive, or with `--every S` keeps the lease alive until Ctrl-C or `--for` seconds (a line
per keep-alive); exit status 1 when the lease is gone. Keys are attached with
`nokv kv put KEY VALUE --lease ID`.
"""

from __future__ import annotations

import sys

import trio

from nokvpy.cli.common import CliError
from nokvpy.cli.data_cmd import Target, run_handler
from nokvpy.cli.output import print_json, table
from nokvpy.client import Client, LeaseNotFoundError


def run(args) -> int:
    return run_handler(args, cmd_lease)


async def cmd_lease(args, target: Target, client: Client) -> int:
    action = args.action
    if action == "grant":
        lease = await client.grant(args.ttl)
        if args.json:
            print_json({"lease_id": lease, "ttl": args.ttl})
        else:
            print(lease)
        return 0
    if action == "revoke":
        await client.revoke(args.lease_id)
        _out(args, {"lease_id": args.lease_id, "revoked": True}, "OK: revoked (its keys go)")
        return 0
    if action == "list":
        leases = await client.leases()
        if args.json:
            print_json({"leases": [{"lease_id": k, "ttl": v} for k, v in sorted(leases.items())]})
        else:
            print(table([{"lease_id": k, "ttl": f"{v:g}"} for k, v in sorted(leases.items())],
                        ["lease_id", "ttl"]))
        return 0
    return await _keep_alive(args, client)


async def _keep_alive(args, client: Client) -> int:
    with trio.move_on_after(args.duration if args.duration else float("inf")):
        while True:
            try:
                ttl = await client.keep_alive(args.lease_id)
            except LeaseNotFoundError as exc:
                raise CliError(str(exc)) from None
            _out(args, {"lease_id": args.lease_id, "ttl": ttl},
                 f"lease {args.lease_id} kept alive for {ttl:g} s")
            if not args.every:
                return 0
            sys.stdout.flush()
            await trio.sleep(args.every)
    return 0


def _out(args, body: dict, text: str) -> None:
    if args.json:
        print_json(body)
    else:
        print(text)
