"""The metrics endpoint (nokvpy.rpc.metrics_http) in-process under trio, on 127.0.0.1.

GET /metrics answers 200 with Prometheus text (content type of format 0.0.4); other paths
404, other methods 405; garbage, non-ASCII and oversized requests 400 and the server keeps
serving; a client that does not finish its request is cut at the read deadline (408), also
when it dribbles bytes; connections beyond the limit get 503; a failing collector is left
out. The client side (`fetch_metrics`), the address rules and the process / RPC families.
"""

from __future__ import annotations

import functools
from contextlib import asynccontextmanager

import pytest
import trio

from nokvpy import metrics as m
from nokvpy.rpc.identity import Counters
from nokvpy.rpc.metrics_http import (
    MetricsAddressError,
    MetricsFetchError,
    MetricsServer,
    fetch_metrics,
    parse_metrics_addr,
    parse_request,
    process_collector,
    rpc_families,
    split_counter,
)


def regions():
    fam = m.gauge("nokv_raft_applied_index", "Applied index.")
    fam.add(7, region=1)
    return [fam, m.named_counters("store", {"peers_started": 1})]


@asynccontextmanager
async def serving(collectors=(regions,), **kw):
    server = MetricsServer(list(collectors), **kw)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve, "127.0.0.1", 0)
        try:
            yield server, f"{host}:{port}"
        finally:
            nursery.cancel_scope.cancel()


async def exchange(addr: str, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send `data` on a new connection and read until the server closes it."""
    host, port = addr.rsplit(":", 1)
    out = bytearray()
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            if data:
                await stream.send_all(data)
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                out += chunk
    return bytes(out)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def headers_of(answer: bytes) -> dict[str, str]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    return {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head.split("\r\n")[1:])}


async def test_get_metrics_serves_the_families_as_text_0_0_4():
    async with serving() as (server, addr):
        answer = await exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(answer) == 200
        headers = headers_of(answer)
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        body = answer.split(b"\r\n\r\n", 1)[1]
        assert int(headers["content-length"]) == len(body)
        families = {f.name: f for f in m.parse(body.decode())}
        assert families["nokv_raft_applied_index"].samples[0].value == 7
        assert families["nokv_metrics_scrape_duration_seconds"].type == m.HISTOGRAM
        assert list(families)[-1] == m.COUNTER_FAMILY  # the long tail last
        # the client side, and a query string is ignored
        text = await fetch_metrics(addr)
        assert "nokv_raft_applied_index{region=\"1\"} 7" in text
        assert "nokv_metrics_http_responses_total{code=\"200\"} 1" in text
        answer = await exchange(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
        assert status_of(answer) == 200
        head = await exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status_of(head) == 200 and head.endswith(b"\r\n\r\n")
        assert int(headers_of(head)["content-length"]) > 0


async def test_other_paths_404_other_methods_405():
    async with serving() as (server, addr):
        assert status_of(await exchange(addr, b"GET / HTTP/1.1\r\n\r\n")) == 404
        assert status_of(await exchange(addr, b"GET /metricsx HTTP/1.1\r\n\r\n")) == 404
        assert status_of(await exchange(addr, b"POST /other HTTP/1.1\r\n\r\n")) == 404
        for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS"):
            answer = await exchange(
                addr, method + b" /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            assert status_of(answer) == 405
            assert headers_of(answer)["allow"] == "GET, HEAD"
        with pytest.raises(MetricsFetchError, match="404"):
            await fetch_metrics(addr, path="/nothing")


@pytest.mark.parametrize("request_bytes, reason", [
    (b"garbage\r\n\r\n", "malformed"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "not_ascii"),  # a TLS hello
    (b"GET /metrics\r\n\r\n", "malformed"),
    (b"GET /metrics HTTP/2.0\r\n\r\n", "malformed"),
    (b"GET metrics HTTP/1.1\r\n\r\n", "malformed"),
    (b"G(T /metrics HTTP/1.1\r\n\r\n", "malformed"),
    (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", "malformed"),
    (b"GET /metrics HTTP/1.1\r\nX: a\x01b\r\n\r\n", "malformed"),
    (b"GET /met\xc3\xa9 HTTP/1.1\r\n\r\n", "not_ascii"),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", "too_large"),
    (b"A" * 50_000, "too_large"),
])
async def test_bad_requests_get_400_and_the_server_keeps_serving(request_bytes, reason):
    async with serving() as (server, addr):
        answer = await exchange(addr, request_bytes)
        assert status_of(answer) == 400, answer[:200]
        assert server.counters[f"bad_requests{{reason={reason}}}"] == 1
        assert status_of(await exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n")) == 200
        text = await fetch_metrics(addr)
        assert f'nokv_metrics_http_bad_requests_total{{reason="{reason}"}} 1' in text


async def test_truncated_and_empty_connections():
    async with serving() as (server, addr):
        host, port = addr.rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"GET /metrics HTTP/1.1\r\n")
        await stream.send_eof()  # closes mid-request
        with trio.fail_after(5):
            answer = bytearray()
            while chunk := await stream.receive_some(4096):
                answer += chunk
        await stream.aclose()
        assert status_of(bytes(answer)) == 400
        probe = await trio.open_tcp_stream(host, int(port))  # a port probe: connect, close
        await probe.aclose()
        with trio.fail_after(5):
            while server.counters["empty_connections"] < 1:
                await trio.sleep(0.01)
        assert status_of(await exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n")) == 200


@pytest.mark.parametrize("dribble", [False, True])
async def test_a_slow_client_is_cut_at_its_read_deadline(dribble):
    async with serving(read_timeout=0.5) as (server, addr):
        host, port = addr.rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        started = trio.current_time()
        answer = bytearray()
        async with stream:
            async def drip():
                for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: yes":
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.05)

            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    if dribble:
                        nursery.start_soon(drip)
                    else:
                        await stream.send_all(b"GET /metr")
                    try:
                        while chunk := await stream.receive_some(4096):
                            answer += chunk
                    except trio.BrokenResourceError:
                        pass
                    nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - started
        assert 0.4 <= elapsed < 3.0, elapsed
        assert status_of(bytes(answer)) == 408
        assert server.counters["timeouts"] == 1
        assert status_of(await exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n")) == 200


async def test_connections_beyond_the_limit_get_503():
    async with serving(max_connections=2, read_timeout=1.0) as (server, addr):
        host, port = addr.rsplit(":", 1)
        idle = [await trio.open_tcp_stream(host, int(port)) for _ in range(2)]
        try:
            with trio.fail_after(5):
                while server.active < 2:
                    await trio.sleep(0.01)
            answer = await exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert status_of(answer) == 503
            assert server.counters["rejected_connections"] == 1
        finally:
            for s in idle:
                await s.aclose()
        with trio.fail_after(5):
            while server.active:
                await trio.sleep(0.01)
        text = await fetch_metrics(addr)
        assert "nokv_metrics_http_rejected_connections_total 1" in text


async def test_a_failing_collector_is_left_out_and_counted(caplog):
    def broken():
        raise RuntimeError("status unavailable")

    async with serving([regions, broken]) as (server, addr):
        text = await fetch_metrics(addr)
        assert "nokv_raft_applied_index" in text
        assert 'nokv_metrics_collect_errors_total{collector="broken"} 1' in text
        text = await fetch_metrics(addr)
        assert 'nokv_metrics_collect_errors_total{collector="broken"} 2' in text
    assert any("status unavailable" in r.getMessage() for r in caplog.records)


async def test_fetch_metrics_errors():
    server = MetricsServer([regions])
    host, port = await server.bind("127.0.0.1", 0)
    await server.aclose()  # nobody listens there now
    with pytest.raises(MetricsFetchError, match="cannot reach"):
        await fetch_metrics(f"{host}:{port}", timeout=2)
    with pytest.raises(MetricsFetchError, match="bad address"):
        await fetch_metrics("nonsense")

    async def not_http(stream):
        await stream.receive_some(65536)  # the request: closing with it unread resets
        await stream.send_all(b"SSH-2.0-OpenSSH\r\n\r\n")

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(functools.partial(trio.serve_tcp, not_http, 0,
                                                            host="127.0.0.1"))
        addr = f"127.0.0.1:{listener.socket.getsockname()[1]}"
        with pytest.raises(MetricsFetchError, match="did not answer with HTTP"):
            await fetch_metrics(addr, timeout=2)
        nursery.cancel_scope.cancel()


async def test_bind_twice_fails_with_os_error():
    first = MetricsServer([])
    host, port = await first.bind("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            await MetricsServer([]).bind(host, port)
    finally:
        await first.aclose()


@pytest.mark.parametrize("text, problem", [
    ("0.0.0.0:9100", "wildcard"), ("[::]:9100", "wildcard"), ("*:9100", "wildcard"),
    ("localhost", "expected host:port"), (":9100", "expected host:port"),
    ("127.0.0.1:x", "expected host:port"), ("127.0.0.1:0", "1-65535"),
    ("127.0.0.1:70000", "1-65535"),
])
def test_metrics_addresses_refused(text, problem):
    with pytest.raises(MetricsAddressError, match=problem):
        parse_metrics_addr(text)


def test_metrics_addresses_accepted():
    assert parse_metrics_addr("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_metrics_addr(" localhost:1 ") == ("localhost", 1)
    assert parse_metrics_addr("[::1]:9100") == ("::1", 9100)
    assert parse_metrics_addr("127.0.0.1:0", allow_port_zero=True) == ("127.0.0.1", 0)


def test_parse_request():
    assert parse_request(b"GET /metrics HTTP/1.1\r\nHost: a:1\r\nAccept: */*") == \
        ("GET", "/metrics")
    assert parse_request(b"HEAD /metrics?a=b HTTP/1.0") == ("HEAD", "/metrics")
    assert parse_request(b"GET /metrics HTTP/1.1\nHost: bare-lf") == ("GET", "/metrics")


def test_split_counter():
    assert split_counter("requests") == ("requests", {})
    assert split_counter("permission_denied{role=client,rpc=Put}") == \
        ("permission_denied", {"role": "client", "rpc": "Put"})
    assert split_counter("x{reason=a,b}") == ("x", {"reason": "a,b"})


def test_process_collector():
    families = {f.name: f for f in process_collector("store", 3, "c1", version="9.9")()}
    info = families["nokv_process_info"].samples[0]
    assert dict(info.labels) == {"kind": "store", "id": "3", "version": "9.9", "cluster": "c1"}
    assert info.value == 1
    assert families["nokv_process_cpu_seconds_total"].samples[0].value > 0
    assert families["nokv_process_cpu_seconds_total"].type == m.COUNTER
    m.render(families.values())


def test_rpc_families_from_server_counters():
    counters = Counters()
    counters["requests"] += 10
    counters.inc("connections_accepted", 2)
    counters.inc("remote_errors", kind="not_leader")
    counters.inc("remote_errors", kind="not_leader")
    counters.inc("handler_errors", type="GetRequest")
    counters.inc("permission_denied", role="client", rpc="Put")
    counters.inc("idle_closed")
    status = {"counters": dict(counters),
              "connections": {"authenticated": 3, "unauthenticated": 1}}
    families = {f.name: f for f in rpc_families(status, {"connects": 4})}
    assert families["nokv_rpc_requests_total"].samples[0].value == 10
    errors = {(s.label("error"), s.label("method"), s.label("reason")): s.value
              for s in families["nokv_rpc_errors_total"].samples}
    assert errors == {("remote_errors", "", "not_leader"): 2,
                      ("handler_errors", "GetRequest", ""): 1,
                      ("permission_denied", "Put", "client"): 1}
    generic = {(s.label("source"), s.label("name")): s.value
               for s in families[m.COUNTER_FAMILY].samples}
    assert generic == {("rpc_server", "idle_closed"): 1, ("rpc_client", "connects"): 4}
    conns = {s.label("state"): s.value for s in families["nokv_rpc_connections"].samples}
    assert conns == {"authenticated": 3, "unauthenticated": 1}
    m.render(families.values())
