"""The ``python -m jepsen_lite`` command line: verdicts, exit codes, subcommand hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jepsen_lite
from jepsen_lite import cli
from jepsen_lite.history import History


def write(tmp_path: Path, events: list[dict], name: str = "h.jsonl") -> str:
    path = tmp_path / name
    History(events).save(path)
    return str(path)


def register_history(hb, stale: bool = False) -> list[dict]:
    o = hb.op
    return hb(
        o(1, "write", 1, (0, 1), key="a"),
        o(1, "write", 2, (2, 3), key="a"),
        o(2, "read", None, (4, 5), out=1 if stale else 2, key="a"),
        o(3, "write", 9, (0, 1), key="b"),
    )


def test_valid_history_exits_0_and_writes_nothing_else(tmp_path, hb, capsys):
    path = write(tmp_path, register_history(hb))
    assert cli.main(["check", path, "--model", "register"]) == 0
    out = capsys.readouterr().out
    assert "model register: valid" in out and "key" in out.splitlines()[0]
    assert [p.name for p in tmp_path.iterdir()] == ["h.jsonl"]


def test_invalid_history_exits_1_with_minimal_subhistory(tmp_path, hb, capsys):
    path = write(tmp_path, register_history(hb, stale=True))
    assert cli.main(["check", path, "--model", "register"]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out and "failing key a" in out
    assert '"f": "read"' in out


def test_json_output(tmp_path, hb, capsys):
    path = write(tmp_path, register_history(hb, stale=True))
    assert cli.main(["check", path, "--model", "register", "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["valid"] is False and result["failing_key"] == "a"
    assert result["per_key"]["b"]["valid"] is True


def test_unknown_exits_2(tmp_path, capsys):
    n = 18
    events = [
        {"type": "invoke", "process": i, "f": "write", "key": "x", "value": i} for i in range(n)
    ]
    events += [{"type": "ok", "process": i, "f": "write", "key": "x", "value": i} for i in range(n)]
    for v in (0, 1):
        events.append({"type": "invoke", "process": n, "f": "read", "key": "x", "value": None})
        events.append({"type": "ok", "process": n, "f": "read", "key": "x", "value": v})
    path = write(tmp_path, [dict(e, index=i, time=i) for i, e in enumerate(events)])
    assert cli.main(["check", path, "--time-limit", "0.05"]) == 2
    assert "unknown" in capsys.readouterr().out


def test_errors_exit_2(tmp_path, hb, capsys):
    assert cli.main(["check", str(tmp_path / "missing.jsonl")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert cli.main(["check", str(bad)]) == 2
    path = write(tmp_path, register_history(hb))
    assert cli.main(["check", path, "--model", "kv"]) == 2  # reads/writes are not kv ops
    assert cli.main(["check", path, "--model", "nope"]) == 2  # argparse usage error
    assert cli.main([]) == 2
    assert "error" in capsys.readouterr().err


def test_route_and_transition_subcommands(tmp_path, hb, capsys):
    reply = {
        "freshness": "STRONG",
        "served_freshness": "BEST_EFFORT",
        "served_root_token": 1,
        "current_root_token": 1,
        "root_lag": 0,
        "serving_class": "AUTHORITATIVE",
        "coordinator": "c1",
    }
    routes = write(
        tmp_path,
        hb({"p": 1, "f": "route", "v": {"freshness": "STRONG"}, "t": (0, 1), "out": reply}),
    )
    assert cli.main(["check-routes", routes]) == 1
    assert "silent_downgrade" in capsys.readouterr().out
    events = tmp_path / "tx.jsonl"
    events.write_text(
        '{"transition_id": "t1", "event": "planned"}\n'
        '{"transition_id": "t1", "event": "terminal"}\n'
    )
    assert cli.main(["check-transitions", str(events), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True


def test_subcommand_hook_for_run():
    seen = []

    def configure(parser):
        parser.add_argument("--nodes", type=int, default=3)

    def run(args):
        seen.append(args.nodes)
        return 0

    cli.register_subcommand("run", "run a workload", configure, run)
    try:
        assert cli.main(["run", "--nodes", "5"]) == 0
    finally:
        del cli.SUBCOMMANDS["run"]
    assert seen == [5]


def test_python_dash_m_entry_point(tmp_path, hb):
    path = write(tmp_path, register_history(hb, stale=True))
    package_root = str(Path(jepsen_lite.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=package_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "jepsen_lite", "check", path, "--model", "register"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "INVALID" in proc.stdout


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_sigterm_stops_a_run_and_its_cluster(tmp_path):
    """`kill` (SIGTERM) of a run stops the cluster it started, every process by its pid,
    like ^C. Before, the run died at once and its metaroot, coordinator and stores kept
    running (found when a sweep was stopped)."""
    import signal
    import time

    package_root = str(Path(jepsen_lite.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=package_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jepsen_lite", "run", "--workload", "register", "--nemesis", "none",
         "--time-limit", "60", "--dir", str(run_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    pids: list[int] = []
    try:
        pid_dir = run_dir / "cluster" / "pids"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(pids) < 5:
            pids = [int(p.read_text()) for p in pid_dir.glob("*.pid")] if pid_dir.exists() else []
            time.sleep(0.2)
        assert len(pids) == 5, pids  # metaroot, coordinator, three stores
        assert all(_running(p) for p in pids)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_running(p) for p in pids):
            time.sleep(0.1)
        assert [p for p in pids if _running(p)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in pids:
            if _running(p):
                os.kill(p, signal.SIGKILL)
