"""Stable wire tags for the shared vocabulary.

Owns: the registry that gives every record sent between processes a stable integer tag.
Never encodes anything itself (that is `nokvpy.wire`), never reuses a tag.

Tag ranges: 1-49 raft types (registered by `nokvpy.wire`), 50-99 shared records in this
package, 100-149 rpc envelope and admin, 150-199 failpoints and faults, 200-299 metaroot,
300-399 coordinator, 400-499 store and KV, 500-599 store admin.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T", bound=type)

TAGS: dict[int, type] = {}
RETIRED_TAGS: frozenset[int] = frozenset()  # tags once used and never to be reused


def wire_type(tag: int):
    """Class decorator: register `cls` under a stable wire tag (refuses duplicates)."""

    def register(cls: T) -> T:
        if tag in RETIRED_TAGS:
            raise ValueError(f"wire tag {tag} is retired and may not be reused")
        existing = TAGS.get(tag)
        if existing is not None and existing is not cls and (
            existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"wire tag {tag} already used by {existing.__qualname__}")
        TAGS[tag] = cls
        cls.__wire_tag__ = tag
        return cls

    return register
