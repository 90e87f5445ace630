"""Refusals of the rooted state: one exception type and the helpers that raise it.

Owns: `RootEventRejected` (a stable snake_case reason, a retry class telling the caller what
to do, the broken authority guarantee if any) and the small field-check helpers every
validation module of metaroot raises it through (`reject`, `need`, `is_int`).
Never: decides whether an event is valid (metaroot.validate, metaroot.handlers and
metaroot.grants do), imports anything of metaroot, or does I/O.
"""

from __future__ import annotations

from nokvpy.protocol.enums import RetryClass
from nokvpy.protocol.grants import Violation


class RootEventRejected(Exception):
    """An event refused by the rooted state: nothing was applied.

    `reason` is a stable snake_case code, `retry_class` tells the caller what to do, and
    `violation` names the broken authority guarantee ("" when none)."""

    def __init__(self, reason: str, retry_class: RetryClass = RetryClass.PERMANENT,
                 detail: str = "", violation: str = Violation.NONE):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.retry_class = retry_class
        self.detail = detail
        self.violation = violation


def reject(reason: str, detail: str = "", retry: RetryClass = RetryClass.PERMANENT,
            violation: str = Violation.NONE) -> RootEventRejected:
    return RootEventRejected(reason, retry, detail, violation)


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def need(cond: bool, reason: str, detail: str = "") -> None:
    if not cond:
        raise reject(reason, detail)


__all__ = ["RootEventRejected"]
