"""The docs stay true: every enum value that crosses a process boundary is listed in
docs/protocols.md, and the README's set-up commands are the ones CI runs."""

from __future__ import annotations

import enum
import inspect
import re
from pathlib import Path

import nokvpy.protocol.enums as enums
import nokvpy.protocol.grants as grants
import nokvpy.protocol.store_rpc as store_rpc

ROOT = Path(__file__).resolve().parent.parent


def protocol_enums() -> list[type[enum.Enum]]:
    return [cls for mod in (enums, grants, store_rpc)
            for _, cls in inspect.getmembers(mod, inspect.isclass)
            if issubclass(cls, enum.Enum) and cls.__module__ == mod.__name__]


def test_every_enum_value_is_documented():
    text = (ROOT / "docs/protocols.md").read_text()
    missing = []
    for cls in protocol_enums():
        row = re.search(rf"^\| `{cls.__name__}` \|(.*)$", text, re.M)
        if row is None:
            missing.append(cls.__name__)
            continue
        missing += [f"{cls.__name__}.{m.name}" for m in cls if f"`{m.name}`" not in row.group(1)]
    assert missing == []


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    assert "python -m pytest -q" in readme
    assert "python -m pytest -q" in ci
