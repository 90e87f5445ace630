"""`nokv coordinator serve` as a real process: it serves, and SIGTERM drains and seals its
grants (a standby could take over at once) and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from nokvpy.client.admin import call
from nokvpy.protocol.coordinator_rpc import AllocIdRequest, DiagnosticsRequest
from nokvpy.rpc import Identity
from nokvpy.rpc.ports import free_ports

pytestmark = pytest.mark.cluster
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _spawn(args: list[str], log) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "nokvpy.cli.main", *args], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def _wait(pred, timeout: float):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - still starting
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out: {last!r}")


def test_sigterm_seals_grants_and_exits_zero(tmp_path):
    mport, cport = free_ports(2)
    maddr, caddr = f"127.0.0.1:{mport}", f"127.0.0.1:{cport}"
    ident = Identity("proc", "client", 0)
    with open(tmp_path / "meta.log", "w") as mlog, open(tmp_path / "coord.log", "w") as clog:
        meta = _spawn(["metaroot", "serve", "--id", "1", "--listen", maddr, "--peer",
                       f"1={maddr}", "--data", str(tmp_path / "m"), "--cluster-id", "proc"], mlog)
        coord = None
        try:
            coord = _spawn(["coordinator", "serve", "--id", "1", "--listen", caddr, "--metaroot",
                            maddr, "--cluster-id", "proc", "--replication", "1",
                            "--grant-ttl", "3"], clog)
            _wait(lambda: len(call(ident, caddr, DiagnosticsRequest(), 1.0).body["grants_held"])
                  == 3, 30)
            first = call(ident, caddr, AllocIdRequest(3), 5.0)
            assert first.first >= 1 and first.count == 3
            coord.send_signal(signal.SIGTERM)
            assert coord.wait(timeout=15) == 0
        finally:
            for p in (coord, meta):
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
    text = (tmp_path / "coord.log").read_text()
    assert "sealed grants" in text and "'alloc_id': 'sealed era" in text, text[-2000:]
