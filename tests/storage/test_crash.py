"""Crash consistency: SIGKILL a writer process at random points, reopen, compare with a model.

The writer (`python -m nokvpy.storage._crashwriter`) commits deterministic raft batches with
`write_ready()` and prints "committed <n>" after each. After every kill the log on disk must
equal the model after batch B, where B is the batch number recorded on disk (in the same
transaction), and B is the last batch reported committed or the one after it (in flight).
Nothing is torn, nothing reported is lost, and hard state never regresses.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nokvpy.raft.types import HardState
from nokvpy.storage import KV, Env, RaftLogStore
from nokvpy.storage._crashwriter import MARKER_KEY, Model

ROOT = Path(__file__).resolve().parents[2]
GROUPS = 3


def spawn(path: Path, seed: int, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env.pop("NOKV_FAILPOINTS", None)
    env.update(extra_env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "nokvpy.storage._crashwriter", str(path), str(seed), str(GROUPS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )


def read_lines_until(proc: subprocess.Popen, prefix: bytes, timeout: float) -> list[bytes]:
    """Read stdout lines until one starts with `prefix` (or timeout / EOF)."""
    lines = []
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        *done, buf = buf.split(b"\n")
        lines.extend(done)
        if any(line.startswith(prefix) for line in done):
            break
    proc._leftover = buf  # type: ignore[attr-defined]
    return lines


def last_committed(lines: list[bytes]) -> int | None:
    nums = [int(line.split()[1]) for line in lines if line.startswith(b"committed ")]
    return nums[-1] if nums else None


def check_against_model(path: Path, model: Model, reported: int, prev_hs: dict) -> int:
    """Reopen, check the on-disk batch number against what was reported, compare the logs."""
    with Env.open(path) as env:
        on_disk = int(KV(env).get(MARKER_KEY) or b"0")
        assert on_disk in (reported, reported + 1), (
            f"disk has batch {on_disk}, writer reported {reported} committed"
        )
        assert on_disk >= model.batches, "durable batches went backwards"
        model.advance_to(on_disk)
        store = RaftLogStore(env)
        for gid, gm in model.groups.items():
            g = store.group(gid)
            assert (g.first_index(), g.last_index()) == (gm.first, gm.last), gid
            assert g.term(gm.trunc_index) == gm.trunc_term
            assert g.entries(gm.first, gm.last + 1) == [gm.log[i] for i in range(gm.first,
                                                                                 gm.last + 1)]
            hs = g.initial_state()[0]
            assert hs == gm.hard_state
            before = prev_hs.get(gid, HardState())
            assert (hs.term, hs.commit) >= (before.term, before.commit), "hard state regressed"
            prev_hs[gid] = hs
    return on_disk


def run_lane(path: Path, seed: int, kills: int, log: list[str], deadline: float | None) -> None:
    rng = random.Random(seed)
    model = Model(seed, GROUPS)
    prev_hs: dict = {}
    on_disk = 0
    done = 0
    for done in range(1, kills + 1):  # noqa: B007 - `done` is reported below
        if deadline is not None and time.monotonic() > deadline and done > kills // 4:
            done -= 1  # over the time budget (a loaded machine): stop early, say so
            break
        proc = spawn(path, seed)
        try:
            if rng.random() < 0.1:  # sometimes kill during startup / recovery
                time.sleep(rng.uniform(0, 0.3))
                lines = []
            else:
                lines = read_lines_until(proc, b"ready", timeout=30)
                if not any(line.startswith(b"ready") for line in lines):
                    status = proc.poll()
                    err = proc.stderr.read().decode(errors="replace") if status is not None else ""
                    raise AssertionError(
                        f"seed {seed}: writer did not start (exit status {status}): {err[-3000:]}"
                    )
                time.sleep(rng.uniform(0, 0.03))  # output stays in the pipe until read
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            rest, err = proc.communicate(timeout=30)
        lines += (getattr(proc, "_leftover", b"") + rest).split(b"\n")
        reported = last_committed(lines)
        if reported is None:
            reported = on_disk  # nothing acknowledged in this run
        assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")[-2000:]
        on_disk = check_against_model(path, model, reported, prev_hs)
    log.append(f"seed {seed}: {done} kills, {on_disk} durable batches")


def run_campaign(
    tmp_path: Path, seed: int, kills: int, lanes: int = 2, budget: float | None = None
) -> list[str]:
    """`kills` SIGKILLs over `lanes` parallel writers. With a time budget (seconds) a lane may
    stop early once it has done a quarter of its kills; the log says how many were done."""
    print(f"crash campaign seed={seed} kills={kills} lanes={lanes} budget={budget}")
    log: list[str] = []
    errors: list[BaseException] = []
    deadline = time.monotonic() + budget if budget is not None else None

    def lane(i: int) -> None:
        try:
            run_lane(tmp_path / f"lane{i}", seed * 100 + i, kills // lanes, log, deadline)
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    print("\n".join(log))
    return log


def test_random_sigkill_never_loses_or_tears_batches(tmp_path):
    seed = int(os.environ.get("NOKV_CRASH_SEED", random.randrange(1 << 30)))
    kills = int(os.environ.get("NOKV_CRASH_KILLS", 50))  # the slow tier does 2,000
    budget = float(os.environ.get("NOKV_CRASH_BUDGET", 50))  # seconds; 0 = no budget
    run_campaign(tmp_path, seed, kills, budget=budget or None)


@pytest.mark.slow
def test_random_sigkill_long(tmp_path):
    seed = int(os.environ.get("NOKV_CRASH_SEED", random.randrange(1 << 30)))
    run_campaign(tmp_path, seed, 2000)


@pytest.mark.parametrize(
    "failpoint, durable_extra",
    [("storage.before_commit", 0), ("storage.after_commit", 1)],
)
def test_crash_at_named_commit_points(tmp_path, failpoint, durable_extra):
    """exit before the commit loses the batch in flight; exit after it keeps it (unacked)."""
    proc = spawn(tmp_path, 7, {"NOKV_FAILPOINTS": f"{failpoint}=5*off->exit"})
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 137, err
    assert f"failpoint '{failpoint}': exit(137)".encode() in err
    reported = last_committed(out.split(b"\n"))
    assert reported == 5
    model = Model(7, GROUPS)
    assert check_against_model(tmp_path, model, reported, {}) == 5 + durable_extra
