"""Admin requests every process answers: failpoints. Tags 150-199."""

from __future__ import annotations

from dataclasses import dataclass

from nokvpy.protocol.base import wire_type


@wire_type(150)
@dataclass(slots=True, frozen=True)
class FailpointSetRequest:
    name: str
    spec: str  # e.g. "raise", "3*raise", "50%exit", "sleep(200)"


@wire_type(151)
@dataclass(slots=True, frozen=True)
class FailpointClearRequest:
    name: str  # "" clears all


@wire_type(152)
@dataclass(slots=True, frozen=True)
class FailpointListRequest:
    pass


@wire_type(153)
@dataclass(slots=True, frozen=True)
class FailpointListReply:
    active: dict[str, str]
    hits: dict[str, int]
