"""The metrics endpoint of a process: Prometheus text over plain HTTP (`--metrics-addr`).

Owns: `MetricsServer` (listen; read one request per connection; answer `GET /metrics` (and
HEAD) with the text of the process's collectors, 404 for another path, 405 for another
method, 400 for a malformed request, 408 when the request does not arrive within the read
deadline, 503 beyond the connection limit), its limits (a request head of at most
`max_head` bytes, read and write deadlines, at most `max_connections` connections at once;
each refusal counted, its log line rate-limited), the families only the process level can
read (`process_collector`: kind, id, version, CPU time; `rpc_collector`: the RPC server's
counters), `parse_metrics_addr` (a wildcard address is refused), `open_metrics` (a serve
command's `--metrics-addr`, parsed and bound, or one line saying why not) and
`fetch_metrics`, the client side for `nokv metrics`. Rendering is `nokvpy.metrics`'.

Never crashes on remote input and never holds a connection past its deadlines; never speaks
TLS or asks for the cluster secret (metrics carry no secret: bind the endpoint to loopback or
a private interface, never to a wildcard); never changes anything in the process (collectors
only read what it already counts).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from nokvpy import metrics as m
from nokvpy.rpc.identity import Counters, format_addr, parse_addr
from nokvpy.rpc.logthrottle import LogThrottle
from nokvpy.rpc.network import TCP

logger = logging.getLogger("nokvpy.rpc.metrics")

MAX_HEAD = 8192  # request line and headers, bytes
READ_TIMEOUT = 5.0  # seconds for the whole request head
WRITE_TIMEOUT = 5.0  # seconds to send the answer
MAX_CONNECTIONS = 16  # connections served at once (more are answered 503 and closed)
LINGER = 0.5  # seconds spent draining what a client still sends after the answer
MAX_DRAIN = 64 * 1024  # bytes read (and dropped) while lingering
MAX_RESPONSE = 64 << 20  # fetch_metrics: the largest answer it reads
SCRAPE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # after CR LF pairs are gone; tab allowed
STATUS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
          408: "Request Timeout", 500: "Internal Server Error", 503: "Service Unavailable"}
# RPC server counters that are errors of one request (the rest are connection-level)
RPC_ERRORS = ("remote_errors", "handler_errors", "unhandled_requests", "permission_denied",
              "rejected_requests", "deadline_exceeded", "bad_requests", "one_way_errors",
              "fault_dropped")


class MetricsAddressError(ValueError):
    """A --metrics-addr that cannot be used (malformed, or a wildcard)."""


def parse_metrics_addr(text: str, allow_port_zero: bool = False) -> tuple[str, int]:
    """`host:port` of a metrics endpoint. A wildcard host (0.0.0.0, ::) is refused: the
    endpoint has no authentication, so it listens where it is told explicitly."""
    text = text.strip()
    try:
        host, port = parse_addr(text)
    except ValueError:
        raise MetricsAddressError(f"bad metrics address {text!r}: expected host:port (for "
                                  "example 127.0.0.1:9100)") from None
    if host in ("*", "") or _unspecified(host):
        raise MetricsAddressError(f"metrics address {text!r} is a wildcard: the endpoint has "
                                  "no authentication, give the address of one interface "
                                  "(for example 127.0.0.1:9100)")
    if port > 65535 or (port == 0 and not allow_port_zero):
        raise MetricsAddressError(f"bad metrics address {text!r}: the port must be 1-65535")
    return host, port


async def open_metrics(metrics_addr: str | None, who: str,
                       collectors: Sequence[m.Collector]) -> MetricsServer | None:
    """The bound metrics endpoint of a serve command's `--metrics-addr` (None when it has
    none): the address parsed (a wildcard refused), a `MetricsServer` over `collectors` bound
    to it. A bad address or a port that cannot be bound raises `MetricsAddressError` with one
    line naming `who` and the reason; nothing is left open."""
    if not metrics_addr:
        return None
    try:
        at = parse_metrics_addr(metrics_addr, allow_port_zero=True)
    except MetricsAddressError as exc:
        raise MetricsAddressError(f"--metrics-addr: {exc}") from None
    server = MetricsServer(list(collectors))
    try:
        await server.bind(*at)
    except OSError as exc:
        raise MetricsAddressError(f"{who} cannot serve metrics on {metrics_addr}: "
                                  f"{exc.strerror or exc}") from None
    return server


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a host name


class BadRequestError(Exception):
    """A request that is not HTTP we serve: answered 400 and counted by `reason`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # a fixed word (a counter label, a log throttle key)
        self.detail = detail


def parse_request(head: bytes) -> tuple[str, str]:
    """(method, path) of a request head (request line and headers, without the blank
    line). BadRequestError when it is not an HTTP/1.x request."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequestError("not_ascii", "the request head is not ASCII") from None
    lines = text.replace("\r\n", "\n").split("\n")
    if CONTROL.search(text.replace("\r\n", "").replace("\n", "")):
        raise BadRequestError("malformed", "a control character in the request head")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequestError("malformed", "the request line is not METHOD TARGET HTTP/1.x")
    method, target, version = parts
    if not TOKEN.fullmatch(method):
        raise BadRequestError("malformed", "the method is not a token")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequestError("malformed", "only HTTP/1.0 and HTTP/1.1 are served")
    if not target.startswith("/"):
        raise BadRequestError("malformed", "the target must be a path (/metrics)")
    for line in lines[1:]:
        name, sep, _ = line.partition(":")
        if not sep or not TOKEN.fullmatch(name):
            raise BadRequestError("malformed", "a header line is not NAME: VALUE")
    return method, target.split("?", 1)[0]


def split_counter(key: str) -> tuple[str, dict[str, str]]:
    """`name{a=1,b=2}` (the keys of nokvpy.rpc.identity.Counters) -> (name, labels)."""
    name, brace, rest = key.partition("{")
    if not brace or not rest.endswith("}"):
        return key, {}
    labels: dict[str, str] = {}
    last = None
    for piece in rest[:-1].split(","):
        k, eq, v = piece.partition("=")
        if eq and k.isidentifier():
            labels[k] = v
            last = k
        elif last is not None:  # a value holding a comma
            labels[last] += "," + piece
    return name, labels


class MetricsServer:
    """Serve the families of `collectors` (nokvpy.metrics.Collector) at /metrics. See the
    module docstring; `counters` and the scrape histogram are served too."""

    def __init__(self, collectors: Sequence[m.Collector], *,
                 max_connections: int = MAX_CONNECTIONS, read_timeout: float = READ_TIMEOUT,
                 write_timeout: float = WRITE_TIMEOUT, max_head: int = MAX_HEAD,
                 linger: float = LINGER, log_interval: float = 10.0) -> None:
        self.collectors: list[m.Collector] = list(collectors)
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_head = max_head
        self.linger = linger
        self.counters = Counters()
        self.scrapes = m.Histogram(SCRAPE_BUCKETS)
        self.address: tuple[str, int] | None = None
        self._listener: trio.abc.Listener | None = None
        self.active = 0  # connections being served
        self._refusing = 0  # connections being answered 503
        self._log = LogThrottle(logger, log_interval)

    def add(self, *collectors: m.Collector) -> None:
        """More collectors (a process binds first, then builds what they read)."""
        self.collectors.extend(collectors)

    # ---- what it serves ----------------------------------------------------------------------

    def render(self) -> bytes:
        """The text of every collector now (a failing collector is left out, counted in
        nokv_metrics_collect_errors_total and logged, rate-limited)."""
        started = time.perf_counter()
        families, errors = m.collect(self.collectors)
        for name, message in errors:
            self.counters.inc("collect_errors", collector=name)
            self._log.warning(f"collect:{name}", "metrics collector %s: %s", name, message)
        # the endpoint's own families last: they count this answer's collector errors
        families, _ = m.collect([lambda: families, self.metrics_http])
        families.sort(key=lambda f: f.name == m.COUNTER_FAMILY)  # the long tail last
        body = m.render(families).encode()
        self.scrapes.observe(time.perf_counter() - started)
        return body

    def metrics_http(self) -> list[m.Family]:
        """The endpoint's own families."""
        responses = m.counter("nokv_metrics_http_responses_total",
                              "Answers of the metrics endpoint, by HTTP status code.")
        bad = m.counter("nokv_metrics_http_bad_requests_total",
                        "Requests answered 400, by reason (malformed, not_ascii, too_large, "
                        "truncated).")
        errors = m.counter("nokv_metrics_collect_errors_total",
                           "Collectors that failed (left out of an answer), by collector.")
        other: dict[str, int] = {}
        for key, value in sorted(self.counters.items()):
            name, labels = split_counter(key)
            if name == "responses":
                responses.add(value, code=labels.get("code", ""))
            elif name == "bad_requests":
                bad.add(value, reason=labels.get("reason", ""))
            elif name == "collect_errors":
                errors.add(value, collector=labels.get("collector", ""))
            else:
                other[key] = value
        return [
            responses, bad, errors,
            m.counter("nokv_metrics_http_timeouts_total",
                      "Connections whose request did not arrive within the read deadline.",
                      self.counters.get("timeouts", 0)),
            m.counter("nokv_metrics_http_rejected_connections_total",
                      "Connections refused (503) because max_connections were being served.",
                      self.counters.get("rejected_connections", 0)),
            m.gauge("nokv_metrics_http_connections", "Connections being served now.",
                    self.active),
            self.scrapes.family("nokv_metrics_scrape_duration_seconds",
                                "Seconds spent collecting and rendering an answer."),
            m.named_counters("metrics_http", {k: v for k, v in other.items()
                                              if k not in ("timeouts", "rejected_connections")}),
        ]

    # ---- serving -------------------------------------------------------------------------

    async def bind(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on host:port now (OSError when it cannot; port 0 picks one) and return the
        bound (host, port); `serve` then serves there. Binding before the serving task
        starts lets a process refuse to start with one line instead of failing later."""
        if self._listener is None:
            self._listener, bound = await TCP.open_listener(host, port)
            self.address = (host, bound)
        assert self.address is not None
        return self.address

    async def aclose(self) -> None:
        """Stop listening (nothing when it never listened; `serve` does this on its way out)."""
        if self._listener is not None:
            with trio.CancelScope(shield=True):
                await self._listener.aclose()

    async def serve(self, host: str = "127.0.0.1", port: int = 0, *,
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Serve until cancelled, where `bind` listens (or, when it was not called, on
        host:port); `await nursery.start(server.serve, host, port)` returns the bound
        (host, port). OSError when it cannot listen."""
        host, bound = await self.bind(host, port)
        listener = self._listener
        assert listener is not None
        try:
            async with trio.open_nursery() as nursery:
                task_status.started((host, bound))
                logger.info("metrics on http://%s/metrics", format_addr(host, bound))
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as e:  # EMFILE and friends: back off, keep serving
                        self.counters.inc("accept_errors")
                        self._log.warning("accept", "metrics endpoint: accept failed: %s", e)
                        await trio.sleep(0.1)
                        continue
                    if self.active >= self.max_connections:
                        self.counters.inc("rejected_connections")
                        self._log.warning("too_many_connections", "metrics endpoint: %d "
                                          "connections open (max_connections): refused one",
                                          self.active)
                        if self._refusing < self.max_connections:
                            self._refusing += 1
                            nursery.start_soon(self._refuse, stream)
                        else:
                            await trio.aclose_forcefully(stream)
                        continue
                    self.active += 1
                    nursery.start_soon(self._handle, stream)
        finally:
            await self.aclose()

    async def _refuse(self, stream: trio.abc.Stream) -> None:
        try:
            with trio.move_on_after(1.0):
                await self._send(stream, 503, b"too many connections\n", linger=False)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._refusing -= 1
            await trio.aclose_forcefully(stream)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        try:
            await self._serve_one(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.counters.inc("connection_errors")  # the client went away
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)

    async def _serve_one(self, stream: trio.abc.Stream) -> None:
        head: bytes | None = None
        bad: BadRequestError | None = None
        with trio.move_on_after(self.read_timeout):
            try:
                head = await self._read_head(stream)
            except BadRequestError as e:
                bad = e
        if bad is not None:
            return await self._bad_request(stream, bad)
        if head is None:
            self.counters.inc("timeouts")
            self._log.info("timeout", "metrics endpoint: no request within %gs",
                           self.read_timeout)
            return await self._send(stream, 408, b"no request within the read deadline\n")
        if not head:
            self.counters.inc("empty_connections")  # closed without a byte (a port probe)
            return None
        try:
            method, path = parse_request(head)
        except BadRequestError as e:
            return await self._bad_request(stream, e)
        if path != "/metrics":
            return await self._send(stream, 404, b"not found: the metrics are at /metrics\n")
        if method not in ("GET", "HEAD"):
            return await self._send(stream, 405, b"method not allowed: use GET\n",
                                    headers={"Allow": "GET, HEAD"})
        try:
            body = self.render()
        except Exception:  # noqa: BLE001 - never crash the endpoint; say so and log it
            self.counters.inc("render_errors")
            logger.exception("metrics endpoint: rendering failed")
            return await self._send(stream, 500, b"rendering the metrics failed (see the "
                                                 b"process log)\n")
        return await self._send(stream, 200, body, content_type=m.CONTENT_TYPE,
                                head_only=method == "HEAD")

    async def _read_head(self, stream: trio.abc.Stream) -> bytes:
        """The request line and headers (up to the blank line); b"" when the client closed
        without sending anything. BadRequestError beyond `max_head` bytes."""
        buf = bytearray()
        while True:
            end = _head_end(buf)
            if end >= 0:
                return bytes(buf[:end])
            if len(buf) > self.max_head:
                raise BadRequestError("too_large",
                                      f"the request head exceeds {self.max_head} bytes")
            chunk = await stream.receive_some(self.max_head + 4 - len(buf))
            if not chunk:
                if buf:
                    raise BadRequestError("truncated", "the connection closed mid-request")
                return b""
            buf += chunk

    async def _bad_request(self, stream: trio.abc.Stream, e: BadRequestError) -> None:
        self.counters.inc("bad_requests", reason=e.reason)
        self._log.info(f"bad_request:{e.reason}", "metrics endpoint: bad request: %s",
                       e.detail)
        await self._send(stream, 400, f"bad request: {e.detail}\n".encode())

    async def _send(self, stream: trio.abc.Stream, code: int, body: bytes, *,
                    content_type: str = "text/plain; charset=utf-8",
                    headers: Mapping[str, str] | None = None, head_only: bool = False,
                    linger: bool = True) -> None:
        """Answer and close: the status line, headers and `body` within the write deadline,
        then (`linger`) read what the client still sends for a moment, so that closing does
        not reset the connection before the client read the answer."""
        self.counters.inc("responses", code=code)
        lines = [f"HTTP/1.1 {code} {STATUS[code]}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)
        with trio.move_on_after(self.write_timeout) as scope:
            await stream.send_all(data)
        if scope.cancelled_caught:
            self.counters.inc("write_timeouts")
            return
        if not linger:
            return
        try:
            await stream.send_eof()  # type: ignore[attr-defined]
        except (AttributeError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        with trio.move_on_after(self.linger):
            drained = 0
            while drained < MAX_DRAIN:
                chunk = await stream.receive_some(8192)
                if not chunk:
                    break
                drained += len(chunk)


def _os_reason(e: BaseException) -> str:
    """The operating system's words for a failed connection ("Connection refused"), also
    when trio wraps the attempts' errors in one OSError."""
    seen: list[BaseException] = [e]
    while seen:
        cur = seen.pop(0)
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror
        if isinstance(cur, BaseExceptionGroup):
            seen.extend(cur.exceptions)
        if cur.__cause__ is not None:
            seen.append(cur.__cause__)
    return str(e) or type(e).__name__


def _head_end(buf: bytearray) -> int:
    """Where the request head ends (before CR LF CR LF, or a bare LF LF), or -1."""
    ends = [i for i in (buf.find(b"\r\n\r\n"), buf.find(b"\n\n")) if i >= 0]
    return min(ends) if ends else -1


# ---- families only the process level reads ---------------------------------------------------


def package_version() -> str:
    """The installed nokvpy's version (its metadata), or "unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nokvpy")
    except PackageNotFoundError:
        return "unknown"


def process_collector(kind: str, node_id: int, cluster_id: str = "",
                      version: str | None = None) -> m.Collector:
    """`nokv_process_info{kind,id,version,cluster} 1`, CPU seconds (time.process_time), the
    time the endpoint started and the peak resident memory."""
    started = time.time()
    version = version if version is not None else package_version()

    def process() -> list[m.Family]:
        families = [
            m.gauge("nokv_process_info", "Which process this is: always 1.", 1, kind=kind,
                    id=node_id, version=version, cluster=cluster_id),
            m.counter("nokv_process_cpu_seconds_total",
                      "User and system CPU seconds of the process (time.process_time).",
                      time.process_time()),
            m.gauge("nokv_process_start_time_seconds",
                    "When the process started serving metrics, seconds since the epoch.",
                    started),
        ]
        try:
            import resource

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
            families.append(m.gauge("nokv_process_max_resident_memory_bytes",
                                    "Peak resident memory of the process, bytes.", rss))
        except (ImportError, OSError):
            pass
        return families

    return process


def rpc_collector(server: Any, client: Any = None) -> m.Collector:
    """The families of an RpcServer's status (and an RpcClient's counters)."""
    def rpc() -> list[m.Family]:
        client_counters = dict(client.counters) if client is not None else {}
        return rpc_families(server.status(), client_counters)

    return rpc


def rpc_families(status: Mapping[str, Any], client_counters: Mapping[str, int]
                 ) -> list[m.Family]:
    """From `RpcServer.status()`: requests, request errors by error / method / reason,
    connections; every other server and client counter as nokv_counter_total."""
    counters = status.get("counters") or {}
    errors: dict[tuple[str, str, str], int] = defaultdict(int)
    rest: dict[str, int] = {}
    for key, value in counters.items():
        name, labels = split_counter(key)
        if name in ("requests", "connections_accepted"):
            continue
        if name in RPC_ERRORS:
            method = labels.get("type") or labels.get("rpc") or ""
            reason = labels.get("kind") or labels.get("reason") or labels.get("role") or ""
            errors[(name, method, reason)] += int(value)
        else:
            rest[key] = value
    err = m.counter("nokv_rpc_errors_total",
                    "RPC requests answered with an error or refused, by error (the server's "
                    "counter), method and reason where the server records them.")
    for (name, method, reason), value in sorted(errors.items()):
        err.add(value, error=name, method=method, reason=reason)
    connections = m.gauge("nokv_rpc_connections", "Open RPC connections, by state.")
    open_now = status.get("connections") or {}
    for state in ("authenticated", "unauthenticated"):
        connections.add(open_now.get(state, 0), state=state)
    generic = m.named_counters("rpc_server", rest)
    m.named_counters("rpc_client", client_counters, generic)
    return [
        m.counter("nokv_rpc_requests_total",
                  "RPC requests received, every method (not counted by method).",
                  counters.get("requests", 0)),
        err,
        connections,
        m.counter("nokv_rpc_connections_accepted_total", "RPC connections accepted.",
                  counters.get("connections_accepted", 0)),
        generic,
    ]


# ---- the client side -------------------------------------------------------------------------


class MetricsFetchError(Exception):
    """The metrics of an endpoint could not be fetched (one line for operators)."""


async def fetch_metrics(addr: str, timeout: float = 5.0, path: str = "/metrics") -> str:
    """GET `path` from the metrics endpoint at `addr` (host:port); the text of a 200 answer.
    MetricsFetchError when it cannot connect, times out or answers anything else."""
    try:
        host, port = parse_addr(addr)
    except ValueError as e:
        raise MetricsFetchError(str(e)) from None
    request = (f"GET {path} HTTP/1.1\r\nHost: {format_addr(host, port)}\r\n"
               "Accept: text/plain\r\nConnection: close\r\n\r\n").encode()
    buf = bytearray()
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(request)
                while True:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > MAX_RESPONSE:
                        raise MetricsFetchError(f"the answer of {addr} exceeds "
                                                f"{MAX_RESPONSE} bytes")
    except trio.TooSlowError:
        raise MetricsFetchError(f"no answer from {addr} within {timeout:g}s") from None
    except (OSError, trio.BrokenResourceError) as e:
        raise MetricsFetchError(f"cannot reach the metrics endpoint {addr}: "
                                f"{_os_reason(e)}") from None
    head, sep, body = bytes(buf).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise MetricsFetchError(f"{addr} did not answer with HTTP")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            body = body[: int(value.strip())]
    if parts[1] != "200":
        first = body.decode("utf-8", errors="replace").strip().splitlines()[:1]
        raise MetricsFetchError(f"{addr} answered {' '.join(parts[1:])}"
                                + (f": {first[0][:200]}" if first else ""))
    return body.decode("utf-8", errors="replace")
