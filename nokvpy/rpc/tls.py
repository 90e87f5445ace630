"""TLS for RPC connections: encryption and mutual authentication with one cluster CA.

Owns: `TlsConfig` (PEM files: this side's certificate and key, and the CA that signs every
certificate of the cluster) and the `ssl` contexts built from it: a server requires a client
certificate signed by the CA (`ssl.CERT_REQUIRED`); a client verifies the server's certificate
against the CA and the host it dialled (an IP address SAN for `127.0.0.1`). `TlsStream`, a
`trio.SSLStream` whose failures keep their reason, and the process-wide defaults that
`RpcServer` and `RpcClient` fall back to (`configure`, `configured`). The framed protocol and
the HMAC role handshake run unchanged inside the TLS stream (`nokvpy.rpc.network.TlsNetwork`
puts TLS on top of any network). Never implements cryptography (the standard library `ssl`
does), never generates keys or certificates (`nokvpy.cluster.local` does, for
`nokv cluster up --tls`) and never opens sockets.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import trio


class TlsConfigError(ValueError):
    """A TLS file that cannot be loaded (missing, unreadable, not PEM, key not matching)."""


class TlsHandshakeError(Exception):
    """The TLS handshake of a connection failed; `reason` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TlsConfig:
    """PEM paths: `cert` (this side's certificate, chain allowed), `key` (its private key),
    `ca` (the CA certificates every peer's certificate must chain to). The same files serve
    both directions: a process presents `cert` when it accepts a connection and when it makes
    one. `server_hostname`: the name a client checks the server's certificate for (None: the
    host of the address it dials)."""

    cert: str
    key: str
    ca: str
    server_hostname: str | None = field(default=None, compare=False)

    @classmethod
    def coerce(cls, value: Any) -> TlsConfig | None:
        """A TlsConfig from a TlsConfig, a mapping with `cert`, `key` and `ca` (as in
        cluster.json), or None / False (no TLS)."""
        if value is None or value is False:
            return None
        if isinstance(value, TlsConfig):
            return value
        if isinstance(value, Mapping):
            missing = [k for k in ("cert", "key", "ca") if not value.get(k)]
            if missing:
                raise TlsConfigError(f"TLS settings lack {', '.join(missing)}: cert, key and ca "
                                     "are all needed (mutual authentication)")
            return cls(str(value["cert"]), str(value["key"]), str(value["ca"]),
                       value.get("server_hostname"))
        raise TypeError(f"tls must be a TlsConfig, a mapping of cert/key/ca paths, None or "
                        f"False, not {type(value).__name__}")

    def as_dict(self) -> dict[str, str]:
        return {"cert": self.cert, "key": self.key, "ca": self.ca}

    # One context per config and side, built on first use: loading the files costs
    # milliseconds, far too much per connection. (cached_property writes the instance
    # __dict__ directly, which a frozen dataclass allows.)
    @cached_property
    def server_context(self) -> ssl.SSLContext:
        """Accepting side: present `cert`, require a client certificate signed by `ca`."""
        ctx = self._context(ssl.Purpose.CLIENT_AUTH)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    @cached_property
    def client_context(self) -> ssl.SSLContext:
        """Connecting side: present `cert`, verify the server against `ca` and its host."""
        ctx = self._context(ssl.Purpose.SERVER_AUTH)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def check(self) -> None:
        """Load every file now (TlsConfigError naming the file that fails): a process checks
        its configuration before it serves, not at its first connection."""
        self.server_context  # noqa: B018 - built for its errors
        self.client_context  # noqa: B018

    def _context(self, purpose: ssl.Purpose) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH
                             else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_verify_locations(cafile=self.ca)
        except (OSError, ssl.SSLError) as e:
            raise TlsConfigError(f"cannot load the TLS CA file {self.ca}: {_describe(e)}") from None
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as e:
            raise TlsConfigError(f"cannot load the TLS certificate {self.cert} with key "
                                 f"{self.key}: {_describe(e)}") from None
        return ctx


class TlsStream(trio.abc.Stream):
    """A TLS connection over `transport_stream` (a `trio.SSLStream`) whose broken-stream
    errors say why (`BrokenResourceError("tls: certificate verify failed: ...")`).

    It has no `socket` attribute on purpose: `FramedStream` writes directly to a stream's
    socket when it has one, which would bypass the encryption. The handshake runs in
    `do_handshake()`, which the RPC server and client call within their handshake deadline
    (`nokvpy.rpc.network.secure`); it raises TlsHandshakeError."""

    def __init__(self, transport_stream: trio.abc.Stream, context: ssl.SSLContext, *,
                 server_side: bool, server_hostname: str | None = None) -> None:
        self.transport_stream = transport_stream
        self.server_side = server_side
        self._ssl = trio.SSLStream(transport_stream, context, server_side=server_side,
                                   server_hostname=server_hostname)
        self._broken: str | None = None  # the reason of the first failure

    async def do_handshake(self) -> None:
        try:
            await self._ssl.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise TlsHandshakeError(self._failed(e)) from None

    def getpeercert(self) -> dict[str, Any] | None:
        """The verified certificate of the other side (after the handshake)."""
        return self._ssl.getpeercert()

    def version(self) -> str | None:
        return self._ssl.version()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            return await self._ssl.receive_some(max_bytes)
        except trio.BrokenResourceError as e:
            raise trio.BrokenResourceError(self._failed(e)) from None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._ssl.send_all(data)
        except trio.BrokenResourceError as e:
            raise trio.BrokenResourceError(self._failed(e)) from None

    async def wait_send_all_might_not_block(self) -> None:
        await self._ssl.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._ssl.aclose()

    def _failed(self, e: BaseException) -> str:
        if self._broken is None:
            self._broken = "tls: " + _describe(e.__cause__ or e)
        return self._broken


def _describe(e: BaseException) -> str:
    """One line for an ssl failure: the verification message, else the OpenSSL reason."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        if e.reason:
            return str(e.reason).lower().replace("_", " ")
        return str(e) or type(e).__name__
    if isinstance(e, trio.BrokenResourceError | trio.ClosedResourceError):
        return str(e) or "connection closed"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


# ---- process-wide defaults ------------------------------------------------------------------

# cluster id -> TLS of every RpcServer / RpcClient of that cluster created without `tls=`;
# the key None is the default for every other cluster id.
_defaults: dict[str | None, TlsConfig] = {}


def configure(tls: Any, cluster_id: str | None = None) -> TlsConfig | None:
    """Make `tls` (see `TlsConfig.coerce`) the TLS of every RpcServer and RpcClient created
    from now on without a `tls=` argument: of cluster `cluster_id` only, or of every cluster
    when it is None (what the serve commands and the CLI's --tls-* flags do). None or False
    removes it. Returns the config."""
    config = TlsConfig.coerce(tls)
    if config is None:
        _defaults.pop(cluster_id, None)
        return None
    current = _defaults.get(cluster_id)
    if current == config:  # the same files: keep the instance whose contexts are built
        return current
    _defaults[cluster_id] = config
    return config


def configured(cluster_id: str) -> TlsConfig | None:
    """The default TLS of a server or client of cluster `cluster_id` (None: plain TCP)."""
    return _defaults.get(cluster_id) or _defaults.get(None)


def resolve(tls: Any, cluster_id: str) -> TlsConfig | None:
    """The TLS a server or client given `tls=` uses: the process default for None, none
    for False, else the given config."""
    if tls is None:
        return configured(cluster_id)
    return TlsConfig.coerce(tls)
