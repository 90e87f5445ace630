"""Serve commands' logging (issue 19 item 5): `--log-level` and `--log-format text|json`, one
event per line naming the process. A real metaroot process on a free loopback port, killed
by pid in `finally`; its stderr goes to a file under tmp_path."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from nokvpy import logfmt
from nokvpy.protocol.metaroot_rpc import MetarootStatusRequest
from nokvpy.rpc import Identity, RpcClient
from nokvpy.rpc.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]


def test_json_lines_carry_time_level_process_logger_and_message():
    fmt = logfmt.JsonFormatter("store-2")
    record = logging.LogRecord("nokvpy.raftstore", logging.WARNING, __file__, 1,
                               "region %d: %s", (7, "naïve"), None)
    event = json.loads(fmt.format(record))
    assert event["level"] == "warning" and event["process"] == "store-2"
    assert event["logger"] == "nokvpy.raftstore" and event["msg"] == "region 7: naïve"
    assert event["ts"].endswith("Z") and "T" in event["ts"]


def test_bad_level_or_format_is_refused():
    with pytest.raises(ValueError, match="log level"):
        logfmt.configure("x-1", "loud", "text")
    with pytest.raises(ValueError, match="log format"):
        logfmt.configure("x-1", "info", "xml")


@pytest.mark.cluster
@pytest.mark.parametrize("level,fmt", [("info", "json"), ("warning", "json"), ("info", "text")])
async def test_a_process_logs_at_its_level_in_its_format(tmp_path, level, fmt):
    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"
    err = tmp_path / "metaroot.err"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NOKV_CLUSTER_SECRET", None)
    with err.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nokvpy.cli.main", "metaroot", "serve", "--id", "1",
             "--listen", addr, "--cluster-id", "logs", "--data", str(tmp_path / "m1"),
             "--log-level", level, "--log-format", fmt],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        async with RpcClient(Identity("logs", "admin", 1), backoff_max=0.1) as rpc:
            with trio.fail_after(30):
                while True:
                    try:
                        st = await rpc.call(addr, MetarootStatusRequest(), 2)
                        if st.is_leader:
                            break
                    except Exception:  # noqa: BLE001 - still starting
                        pass
                    await trio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    lines = [ln for ln in err.read_text().splitlines() if ln.strip()]
    if fmt == "json":
        events = [json.loads(ln) for ln in lines]  # every line is one JSON event
        assert all(e["process"] == "metaroot-1" for e in events)
        levels = {e["level"] for e in events}
        if level == "info":  # a start logs info events...
            assert "info" in levels, events
        else:  # ... which warning level leaves out
            assert levels <= {"warning", "error", "critical"}, events
    else:
        assert any("metaroot-1" in ln and " INFO " in ln for ln in lines), lines
