"""Terminal output for the `nokv` command: tables for people, JSON for scripts.

Owns: rendering plain data (dicts, lists, enums, bytes) as aligned tables or JSON, and the
progress line printed while a command waits. Never decides what to print.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any


def plain(value: Any) -> Any:
    """Turn records, enums and bytes into JSON-friendly data."""
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bytes):
        return show_key(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(plain(k)): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    return value


def show_key(key: bytes) -> str:
    """Printable keys stay readable; anything else is shown as 0x-hex."""
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + key.hex()
    if text.isprintable() and not text.startswith("0x"):
        return text
    return "0x" + key.hex()


def parse_key(text: str) -> bytes:
    """`0x...` is hex; anything else is UTF-8. Raises ValueError with a clear message."""
    if text.startswith("0x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            raise ValueError(f"bad hex key {text!r}: expected 0x followed by hex digits") from None
    return text.encode("utf-8")


def print_json(data: Any) -> None:
    print(json.dumps(plain(data), indent=2, sort_keys=False))


def table(rows: Sequence[dict[str, Any]], columns: Iterable[str] | None = None) -> str:
    if not rows:
        return "(none)"
    cols = list(columns) if columns is not None else list(rows[0].keys())
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    head = "  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True))
    lines = [head] + ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def fmt(value: Any) -> str:
    value = plain(value)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={fmt(v)}" for k, v in value.items())
    return str(value)


def kv_lines(data: dict[str, Any]) -> str:
    width = max((len(k) for k in data), default=0)
    return "\n".join(f"{k.ljust(width)}  {fmt(v)}" for k, v in data.items())


class Progress:
    """A one-line progress indicator on stderr (silent when stderr is not a terminal)."""

    def __init__(self, label: str, enabled: bool = True):
        self.label = label
        self.enabled = enabled

    def update(self, text: str) -> None:
        if self.enabled:
            end = "\r" if sys.stderr.isatty() else "\n"
            print(f"{self.label}: {text}", file=sys.stderr, end=end, flush=True)

    def done(self, text: str = "done") -> None:
        if self.enabled:
            print(f"{self.label}: {text}" + (" " * 20 if sys.stderr.isatty() else ""),
                  file=sys.stderr, flush=True)
