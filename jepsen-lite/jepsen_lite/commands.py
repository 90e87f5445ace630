"""The subcommand registry of ``python -m jepsen_lite`` and what every subcommand shares.

Owns: the exit statuses (0 valid, 1 invalid, 2 unknown or error), :data:`SUBCOMMANDS` and
:func:`register_subcommand` (how a module such as :mod:`.run_cli` or :mod:`.soak` adds a
subcommand), :func:`exit_status` and :func:`format_table`. Never parses arguments and never
runs a subcommand (that is :mod:`.cli`, which loads the other subcommand modules lazily: they
import this module, not :mod:`.cli`, so there is no import cycle).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EXIT_VALID = 0
EXIT_INVALID = 1
EXIT_UNKNOWN = 2


@dataclass(frozen=True)
class Subcommand:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(
    name: str,
    help: str,
    configure: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add (or replace) a subcommand of ``python -m jepsen_lite``."""
    SUBCOMMANDS[name] = Subcommand(help, configure, run)


def exit_status(valid: Any) -> int:
    if valid is True:
        return EXIT_VALID
    if valid is False:
        return EXIT_INVALID
    return EXIT_UNKNOWN


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
