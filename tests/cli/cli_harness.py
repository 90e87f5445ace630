"""Helpers of the `nokv` command tests: run the command as a subprocess (with a timeout, never
with a traceback), check one-line errors, poll with deadlines, and find and kill leftover
processes of a cluster directory. (A uniquely named module: tests/ has no packages.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from nokvpy.cluster.local import pid_alive

REPO = Path(__file__).resolve().parents[2]


def nokv(*args: object, timeout: float = 30.0, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m nokvpy.cli.main ARGS` and return the finished process (never raises
    on a non-zero exit; a traceback on stderr fails the test at once)."""
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = str(REPO) + os.pathsep + child_env.get("PYTHONPATH", "")
    child_env.pop("NOKV_DEBUG", None)
    for name in ("NOKV_DIR", "NOKV_CLUSTER_ID", "NOKV_CLUSTER_SECRET", "NOKV_FAILPOINTS"):
        child_env.pop(name, None)
    child_env.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "nokvpy.cli.main", *map(str, args)],
        cwd=cwd or REPO, env=child_env, capture_output=True, text=True, timeout=timeout,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def nokv_many(*commands: tuple, timeout: float = 30.0) -> list[subprocess.CompletedProcess]:
    """Run independent commands concurrently (each a tuple of arguments); results in order.
    Starting Python dominates a command's cost, so this is what keeps the suite fast."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(lambda args: nokv(*args, timeout=timeout), commands))


def ok(result: subprocess.CompletedProcess) -> str:
    """stdout of a command that must have succeeded."""
    assert result.returncode == 0, (result.args, result.returncode, result.stdout, result.stderr)
    return result.stdout


def parsed(result: subprocess.CompletedProcess):
    """stdout of a successful `--json` command, parsed."""
    return json.loads(ok(result))


def one_line_error(result: subprocess.CompletedProcess, status: int | None = None) -> str:
    """The error line of a command that must have failed with exactly one line on stderr."""
    assert result.returncode != 0, (result.args, result.stdout, result.stderr)
    if status is not None:
        assert result.returncode == status, (result.args, result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, (result.args, result.stderr)
    assert lines[0].startswith("nokv: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2, fail: bool = True):
    """Poll `predicate` until it returns something truthy; at the deadline fail the test
    (or return the last falsy value when `fail` is False)."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            if fail:
                pytest.fail(f"timed out after {timeout}s waiting for {what}")
            return last
        time.sleep(interval)


@dataclass
class Cluster:
    dir: Path
    up: subprocess.CompletedProcess  # the `nokv cluster up` that started it

    @property
    def spec(self) -> dict:
        return json.loads((self.dir / "cluster.json").read_text())

    def run(self, *args: object, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """`nokv ARGS --dir DIR`."""
        return nokv(*args, "--dir", self.dir, timeout=timeout)

    def many(self, *commands: tuple, timeout: float = 30.0) -> list[subprocess.CompletedProcess]:
        """Several independent `nokv ... --dir DIR` commands at once; results in order."""
        return nokv_many(*(tuple(c) + ("--dir", self.dir) for c in commands), timeout=timeout)

    def json(self, *args: object, timeout: float = 30.0):
        return parsed(self.run(*args, "--json", timeout=timeout))

    def pids(self) -> dict[str, int]:
        out = {}
        for path in (self.dir / "pids").glob("*.pid"):
            try:
                out[path.stem] = int(path.read_text().strip())
            except ValueError:
                pass
        return out

    def health(self) -> dict[str, str]:
        """name -> health column of `cluster status` (exit status 3 when one is not healthy)."""
        result = self.run("cluster", "status", "--json")
        assert result.returncode in (0, 3), (result.returncode, result.stdout, result.stderr)
        return {p["name"]: p["health"] for p in json.loads(result.stdout)["processes"]}

    def wait_all_up(self, timeout: float = 30.0, degraded_ok: bool = False) -> None:
        """Wait until every process answers with health `up` (or `up (...)` when
        `degraded_ok`: a store whose restart state is DEGRADED still serves)."""
        last: dict[str, str] = {}

        def check() -> bool:
            last.update(self.health())
            return all(h == "up" or (degraded_ok and h.startswith("up")) for h in last.values())

        if not wait_for(check, timeout, "every process of the cluster to be up", fail=False):
            pytest.fail(f"timed out after {timeout}s waiting for every process to be up: {last}")

    def wait_kv(self, key: str, value: str, timeout: float = 30.0) -> None:
        """Wait until a linearizable read of `key` returns `value` (the cluster serves)."""
        def read() -> bool:
            result = self.run("kv", "get", key, "--json", "--timeout", "3")
            return result.returncode == 0 and json.loads(result.stdout).get("value") == value

        wait_for(read, timeout, f"kv get {key} to return {value!r}")




def kill_leftovers(directory: Path, pids: dict[str, int] | None = None) -> list[str]:
    """SIGKILL every recorded pid of `directory` (its pid files plus `pids`) that is still
    alive and still one of its processes (listening on an address of its cluster.json, or
    naming the directory); returns the names killed."""
    pids = dict(pids or {})
    for path in (directory / "pids").glob("*.pid"):
        try:
            pids.setdefault(path.stem, int(path.read_text().strip()))
        except (OSError, ValueError):
            pass
    try:
        spec = json.loads((directory / "cluster.json").read_text())
        addresses = {p["address"].encode() for p in spec["processes"]}
    except (OSError, ValueError, KeyError):
        addresses = set()
    root = str(directory).encode()
    killed = []
    for name, pid in pids.items():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if pid_alive(pid) and any(arg in addresses or root in arg for arg in cmdline):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
            killed.append(name)
    return killed


def start_cluster(directory: Path, *args: object, timeout: float = 90.0) -> subprocess.CompletedProcess:
    if os.environ.get("NOKV_TEST_TLS") == "1" and "--tls" not in args and \
            not (Path(directory) / "cluster.json").exists():
        args = (*args, "--tls")  # the CLI suite on a TLS cluster: NOKV_TEST_TLS=1 pytest tests/cli
    up = nokv("cluster", "up", "--dir", directory, *args, timeout=timeout)
    if up.returncode != 0:
        logs = nokv("cluster", "logs", "--dir", directory, "--lines", "15").stdout
        pytest.fail(f"`nokv cluster up` failed: {up.stderr}\n{logs}")
    return up




UNSUPPORTED = "no handler for AdminRequest"
TOPOLOGY: dict[str, str] = {}  # "missing" / "broken" (with the reason) once known, or "ok"


def admin_split(cluster: Cluster, key: str) -> dict:
    """`nokv admin split KEY --json` on the shared cluster. Skips the test when the stores do
    not implement topology transitions, or when an earlier split failed (that test failed
    with the reason: one failure, not a cascade of crashed stores)."""
    if "missing" in TOPOLOGY:
        pytest.skip(f"topology transitions are not implemented by the store yet: {TOPOLOGY['missing']}")
    if "broken" in TOPOLOGY:
        pytest.skip(f"an earlier `nokv admin split` failed: {TOPOLOGY['broken']}")
    result = cluster.run("admin", "split", key, "--json", "--timeout", "20", timeout=60)
    if result.returncode != 0 and UNSUPPORTED in result.stderr:
        TOPOLOGY["missing"] = result.stderr.strip()
        pytest.skip(f"topology transitions are not implemented by the store yet: {TOPOLOGY['missing']}")
    if result.returncode != 0:
        TOPOLOGY["broken"] = result.stderr.strip()
        down = [n for n, h in cluster.health().items() if h == "down"]
        restarted = cluster.run("cluster", "up", timeout=90)  # bring crashed processes back
        pytest.fail(f"`nokv admin split {key}` failed: {result.stderr.strip()}"
                    + (f"; {', '.join(down)} died (see their logs); `cluster up` after it: "
                       f"{'ok' if restarted.returncode == 0 else restarted.stderr.strip()}"
                       if down else ""))
    TOPOLOGY["ok"] = ""
    return parsed(result)
