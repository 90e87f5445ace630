"""`nokv watch`: print the changes of a prefix or a key range as they happen.

Owns: the command's arguments as a `Client.watch`, one line per change (or one JSON object per
line with `--json`, flushed at once so a pipe sees each change as it happens), and when it
stops: after `--count` changes, after `--duration` seconds, or on Ctrl-C. A watch that can no
longer go on (its region no longer holds the changes after its cursor) is a one-line error
and exit status 1, never a silent gap.
"""

from __future__ import annotations

import json
import sys

import trio

from nokvpy.cli.data_cmd import Target, key_arg, run_handler
from nokvpy.cli.output import show_key
from nokvpy.client import Client, WatchEvent


def run(args) -> int:
    return run_handler(args, cmd_watch)


async def cmd_watch(args, target: Target, client: Client) -> int:
    start = key_arg(args.key)
    if args.end is not None:
        w = client.watch(start, key_arg(args.end))
        what = f"[{args.key}, {args.end or '(end)'})"
    else:
        w = client.watch(start, prefix=True)
        what = f"keys starting with {args.key!r}" if args.key else "every key"
    seen = 0
    async with w:  # every region of the range has its start: changes from now on come
        print(f"watching {what} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        with trio.move_on_after(args.duration if args.duration else float("inf")):
            async for ev in w:
                print(_line(ev, args.json), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    break
    return 0


def _line(ev: WatchEvent, as_json: bool) -> str:
    if as_json:
        return json.dumps({"kind": ev.kind, "key": show_key(ev.key),
                           "value": None if ev.value is None else show_key(ev.value),
                           "region_id": ev.region_id, "revision": list(ev.revision)})
    rev = f"rev {ev.version}.{ev.index}.{ev.seq}, region {ev.region_id}"
    if ev.kind == "delete":
        return f"delete {show_key(ev.key)}  ({rev})"
    return f"put    {show_key(ev.key)} = {show_key(ev.value or b'')}  ({rev})"
