"""Terminal output for the `nokv` command: tables for people, JSON for scripts.

Owns: rendering plain data (dicts, lists, enums, bytes) as aligned tables or JSON, and the
progress line printed while a command waits. Never decides what to print.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import json
import re
import sys
import textwrap
import time
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


# a Python bytes literal (b'm1', b"it's") and an enum member's repr (<AdmissionClass.TOPOLOGY: 3>)
_BYTES_LITERAL = re.compile(r"""\bb('(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")""")
_ENUM_REPR = re.compile(r"<[A-Z]\w*\.(\w+): [^<>]*>")


def readable(text: str) -> str:
    """A message for people: byte-string literals become keys as `show_key` prints them
    (`""` when empty), enum reprs their member name."""
    def key(match: re.Match) -> str:
        try:
            value = ast.literal_eval(match.group(0))
        except (ValueError, SyntaxError):
            return match.group(0)
        return show_key(value) or '""'

    return _ENUM_REPR.sub(r"\1", _BYTES_LITERAL.sub(key, text))


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
        if value and not all(_scalar(v) for v in value):
            return "; ".join(fmt(v) for v in value)
        return ",".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={fmt(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def kv_lines(data: dict[str, Any]) -> str:
    """A record for people: one aligned `key  value` line per scalar, nested records as
    indented blocks, lists of records and records of records as (indented) tables."""
    return "\n".join(render_lines(plain(data)))


INLINE_WIDTH = 60  # a small record ({term, index}) is printed on its key's line up to this
TABLE_WIDTH = 110  # a wider table is transposed or printed as blocks instead
LINE_WIDTH = 120  # longer values are wrapped
MAX_ROWS = 12  # long lists of records show their last MAX_ROWS rows (--json has them all)


def render_lines(data: dict[str, Any], indent: int = 0) -> list[str]:
    pad = " " * indent
    if not data:
        return [pad + "-"]
    width = max(len(str(k)) for k in data)
    out: list[str] = []
    for key, value in data.items():
        key = str(key)
        if _inline(value):
            out.extend(_wrapped(f"{pad}{key.ljust(width)}  ", _cell(value)))
            continue
        out.append(f"{pad}{key}:")
        out.extend(_block(key, value, indent + 2))
    return out


def _wrapped(head: str, text: str) -> list[str]:
    """`head` + `text`, a long text (an error message) continued under itself."""
    if len(head) + len(text) <= LINE_WIDTH:
        return [(head + text).rstrip()]
    lines = textwrap.wrap(text, max(LINE_WIDTH - len(head), 40), break_on_hyphens=False) or [""]
    return [head + lines[0]] + [" " * len(head) + line for line in lines[1:]]


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _inline(value: Any) -> bool:
    if _scalar(value) or value in ({}, [], ()):
        return True
    if isinstance(value, list):
        return all(_scalar(v) for v in value) and len(fmt(value)) <= INLINE_WIDTH
    if isinstance(value, dict):
        return (len(value) <= 4 and all(_scalar(v) for v in value.values())
                and len(fmt(value)) <= INLINE_WIDTH)
    return True


def _cell(value: Any) -> str:
    text = fmt(value)
    return text if text else "-"


def _block(key: str, value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, dict):
        rows = list(value.values())
        if rows and all(isinstance(r, dict) and r and all(_inline(v) for v in r.values())
                        for r in rows):
            first = _singular(key)
            lines = table([{first: k, **r} for k, r in value.items()], _columns(first, rows)).splitlines()
            if max(map(len, lines)) <= TABLE_WIDTH:
                return [pad + line for line in lines]
            if len(rows) <= 5:
                lines = _transposed(first, value)
                if max(map(len, lines)) <= TABLE_WIDTH:
                    return [pad + line for line in lines]
        return render_lines(value, indent)
    if isinstance(value, list):
        if all(isinstance(r, dict) and all(_inline(v) for v in r.values()) for r in value):
            shown = value[-MAX_ROWS:]
            lines = table(shown, _columns(None, shown)).splitlines()
            if max(map(len, lines)) <= TABLE_WIDTH:
                out = [pad + line for line in lines]
                if len(value) > len(shown):
                    out.append(f"{pad}({len(value) - len(shown)} earlier not shown; --json has all)")
                return out
        out = []
        for item in value:
            if isinstance(item, dict):
                sub = render_lines(item, indent + 2)
                out.append(pad + "- " + sub[0].lstrip())
                out.extend(sub[1:])
            else:
                out.append(f"{pad}- {_cell(item)}")
        return out
    return [pad + _cell(value)]


def _columns(first: str | None, rows: list[dict]) -> list[str]:
    cols: dict[str, None] = {first: None} if first else {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    return list(cols)


def _transposed(first: str, value: dict[str, dict]) -> list[str]:
    fields = _columns(None, list(value.values()))
    grid = [[first, *value.keys()]] + [[f, *(_cell(r.get(f)) for r in value.values())] for f in fields]
    widths = [max(len(row[i]) for row in grid) for i in range(len(grid[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in grid]


def _singular(key: str) -> str:
    if key.endswith("ies"):
        return key[:-3] + "y"
    if key.endswith("s") and not key.endswith("ss"):
        return key[:-1]
    return "name"


class Progress:
    """Progress of a command that waits, on stderr: one line rewritten in place on a
    terminal; otherwise one line per change (repeats are not printed again)."""

    def __init__(self, label: str, enabled: bool = True):
        self.label = label
        self.enabled = enabled
        self.started = time.monotonic()
        self.last: str | None = None
        self.width = 0
        self.tty = sys.stderr.isatty()

    def update(self, text: str) -> None:
        if not self.enabled or text == self.last:
            return
        self.last = text
        line = f"{self.label}: {text}"
        if self.tty:
            print("\r" + line.ljust(self.width), file=sys.stderr, end="", flush=True)
            self.width = len(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def done(self, text: str = "done") -> None:
        if not self.enabled:
            return
        line = f"{self.label}: {text} ({time.monotonic() - self.started:.1f}s)"
        if self.tty:
            print("\r" + line.ljust(self.width), file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)
