"""Typed errors of the nokvpy client: every failure says what happened and what to do.

Owns: the exception hierarchy users catch. Each carries the stable reason from the server
(an `AdmissionReason` name for stores, a route reason for coordinators) and its hints.
"""

from __future__ import annotations

from typing import Any


class NokvError(Exception):
    """Base of every client error."""

    reason: str = "error"

    def __init__(self, message: str, reason: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.details = details or {}


class RejectedError(NokvError):
    """A store refused the request before executing it (nothing was written).

    `reason` is an AdmissionReason name; `admission` the full record with hints."""

    def __init__(self, message: str, reason: str, admission: Any = None, details=None):
        super().__init__(message, reason, details)
        self.admission = admission


class RouteRejectedError(NokvError):
    """A coordinator refused a route read at the requested freshness (no silent downgrade).

    `witness` says how fresh the coordinator was."""

    def __init__(self, message: str, reason: str, witness: Any = None, details=None):
        super().__init__(message, reason, details)
        self.witness = witness


class OutcomeUnknownError(NokvError):
    """A write was sent but its outcome is unknown (connection lost or deadline passed after
    it may have been proposed). It may or may not have applied; it was NOT retried."""

    reason = "outcome_unknown"


class UnavailableError(NokvError):
    """No coordinator or store could be reached (nothing was written)."""

    reason = "unavailable"


class DeadlineExceededError(NokvError):
    """The operation's deadline passed before it could be sent or completed."""

    reason = "deadline_exceeded"


class InvalidRequestError(NokvError):
    """The request is malformed (for example an oversized key); nothing was sent."""

    reason = "invalid"
