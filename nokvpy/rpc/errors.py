"""Errors a caller of `nokvpy.rpc` can see.

Owns: the typed client-side failures. Each says what is known about the request's outcome:
a timeout or a lost connection after sending leaves it UNKNOWN (the server may have applied
it); a refused connect or handshake means it was never sent. Never used for local bugs.
"""

from __future__ import annotations


class RpcError(Exception):
    """Base of every RPC failure."""


class RemoteError(RpcError):
    """The server answered with an error (an `ErrorReply`).

    Raised by handlers to reply with an error, and re-raised on the client with the same
    fields. `kind` is a stable string (`nokvpy.protocol.ErrorKind` values for service errors;
    "timeout", "internal", "invalid_argument", "unavailable" from the rpc layer itself);
    `reason` a finer stable code; `message` prose for humans; `details` machine hints
    (leader id, retry class, current epoch ...): any encodable values.
    """

    def __init__(
        self,
        kind: str,
        reason: str = "",
        message: str = "",
        details: dict[str, object] | None = None,
    ) -> None:
        self.kind = str(kind)
        self.reason = reason
        self.message = message
        self.details = dict(details) if details else {}
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.kind}"
        if self.reason:
            text += f"/{self.reason}"
        if self.message:
            text += f": {self.message}"
        if self.details:
            text += f" {self.details!r}"
        return text

    def __repr__(self) -> str:
        return (
            f"RemoteError(kind={self.kind!r}, reason={self.reason!r}, "
            f"message={self.message!r}, details={self.details!r})"
        )


class RpcTimeoutError(RpcError, TimeoutError):
    """The deadline passed before an answer arrived.

    `sent` is False when the deadline expired before the request left (while connecting):
    then it was certainly not executed. When `sent` is True the outcome is UNKNOWN.
    """

    def __init__(self, addr: str, what: str, timeout: float | None, *, sent: bool) -> None:
        self.addr = addr
        self.what = what
        self.timeout = timeout
        self.sent = sent
        outcome = "outcome UNKNOWN (the server may have executed it)" if sent else "not sent"
        super().__init__(f"{what} to {addr} timed out after {timeout}s: {outcome}")


class RpcUnavailableError(RpcError):
    """The peer could not be reached, or the connection broke.

    `outcome_unknown` is True when the request had been sent before the connection was lost:
    the server may or may not have executed it; a non-idempotent request must not be blindly
    retried. `retry_after` (seconds) is set while the address is in reconnect backoff.
    """

    def __init__(
        self,
        addr: str,
        reason: str,
        *,
        outcome_unknown: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.addr = addr
        self.reason = reason
        self.outcome_unknown = outcome_unknown
        self.retry_after = retry_after
        text = f"{addr} unavailable: {reason}"
        text += (
            "; request outcome UNKNOWN (it was sent before the connection broke)"
            if outcome_unknown
            else "; request not sent"
        )
        if retry_after is not None:
            text += f"; reconnect backoff for {retry_after:.3f}s"
        super().__init__(text)


class HandshakeRefusedError(RpcUnavailableError):
    """The connection handshake failed: wrong cluster id, protocol version mismatch, bad or
    missing cluster-secret proof. `reason` is the stable code (e.g. "cluster_mismatch").
    Retrying will not help until the configuration is fixed."""

    def __init__(self, addr: str, reason: str, detail: str = "") -> None:
        self.detail = detail
        super().__init__(addr, f"handshake refused: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason

