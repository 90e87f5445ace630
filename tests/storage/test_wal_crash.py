"""WAL-mode crash consistency: SIGKILL a writer process at random moments, reopen, compare.

The writer (`python -m nokvpy.storage._walcrashwriter`) commits deterministic raft batches with
`write_ready()` in WAL mode (small segments, so it is also killed during rotations) and prints
"committed <n>" after each. After every kill the reopened store must equal the reference model
after batch B, where B (found from the log itself) is the last batch reported committed or the
one in flight; the in-flight batch's compaction (its LMDB part, committed before its WAL frame)
may be on disk without the rest of it. Nothing reported is lost and hard state never regresses.
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

from nokvpy.raft.types import HardState
from nokvpy.storage import Env, RaftLogStore
from nokvpy.storage._crashwriter import Model
from nokvpy.storage._walcrashwriter import durable_batches, next_compactions, with_compaction

ROOT = Path(__file__).resolve().parents[2]
GROUPS = 3


def spawn(path: Path, seed: int, segment_bytes: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env.pop("NOKV_FAILPOINTS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "nokvpy.storage._walcrashwriter", str(path), str(seed),
         str(GROUPS), str(segment_bytes)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )


def wait_ready(proc: subprocess.Popen, timeout: float) -> bytes:
    """Read stdout until a "ready" line (or timeout / EOF); return what was read."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buf = b""
    while time.monotonic() < deadline and b"ready" not in buf:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf


def last_committed(out: bytes) -> int | None:
    nums = [int(line.split()[1]) for line in out.split(b"\n") if line.startswith(b"committed ")]
    return nums[-1] if nums else None


def check(path: Path, seed: int, segment_bytes: int, reported: int,
          prev_hs: dict[int, HardState]) -> Model:
    """Reopen; the batch on disk must be the reported one or the one in flight; compare."""
    env = Env.open(path / "db")
    try:
        store = RaftLogStore.open_wal(env, str(path / "wal"), segment_bytes=segment_bytes)
        try:
            model = durable_batches(store.group(1).last_index(), seed, GROUPS)
            assert model.batches in (reported, reported + 1), (
                f"disk has batch {model.batches}, writer reported {reported} committed")
            # The batch in flight may have committed its LMDB part (compactions) only.
            pending = next_compactions(model) if model.batches == reported else {}
            for gid in model.groups:
                g = store.group(gid)
                m = model
                if gid in pending and g.first_index() == pending[gid] + 1:
                    m = with_compaction(model, gid, pending[gid])
                gm = m.groups[gid]
                where = f"group {gid} after batch {model.batches}"
                assert (g.first_index(), g.last_index()) == (gm.first, gm.last), where
                assert g.term(gm.trunc_index) == gm.trunc_term, where
                assert g.entries(gm.first, gm.last + 1) == [
                    gm.log[i] for i in range(gm.first, gm.last + 1)], where
                hs = g.hard_state
                assert hs == gm.hard_state, where
                before = prev_hs.get(gid, HardState())
                assert (hs.term, hs.commit) >= (before.term, before.commit), "hs regressed"
                prev_hs[gid] = hs
        finally:
            store.close()
    finally:
        env.close()
    return model


def run_lane(path: Path, seed: int, segment_bytes: int, kills: int, deadline: float,
             log: list[str]) -> None:
    rng = random.Random(seed)
    prev_hs: dict[int, HardState] = {}
    on_disk = 0
    done = 0
    segments_seen: set[str] = set()
    while done < kills and (time.monotonic() < deadline or done < 3):
        proc = spawn(path, seed, segment_bytes)
        out = b""
        try:
            if rng.random() < 0.1:  # sometimes kill during startup / replay
                time.sleep(rng.uniform(0, 0.4))
            else:
                out = wait_ready(proc, timeout=30)
                if b"ready" not in out:
                    status = proc.poll()
                    err = proc.stderr.read().decode(errors="replace") if status is not None else ""
                    raise AssertionError(
                        f"seed {seed}: writer did not start (exit status {status}): {err[-3000:]}")
                time.sleep(rng.uniform(0, 0.08))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            rest, err = proc.communicate(timeout=30)
        out += rest
        assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")[-2000:]
        reported = last_committed(out)
        if reported is None:
            reported = on_disk  # nothing acknowledged in this run
        on_disk = check(path, seed, segment_bytes, reported, prev_hs).batches
        segments_seen.update(p.name for p in (path / "wal").glob("*.wal"))
        done += 1
    if segment_bytes <= 4096 and on_disk >= 30:
        assert len(segments_seen) > 1, "small segments but the WAL never rotated"
    log.append(f"seed {seed} segment_bytes {segment_bytes}: {done} kills, "
               f"{on_disk} durable batches, {len(segments_seen)} segments seen")


def test_random_sigkill_in_wal_mode_loses_no_committed_batch(tmp_path):
    seed = int(os.environ.get("NOKV_CRASH_SEED", random.randrange(1 << 30)))
    kills = int(os.environ.get("NOKV_WAL_CRASH_KILLS", 24))
    budget = float(os.environ.get("NOKV_WAL_CRASH_BUDGET", 12))
    print(f"WAL crash campaign seed={seed} kills={kills} budget={budget}s "
          f"(rerun: NOKV_CRASH_SEED={seed})")
    deadline = time.monotonic() + budget
    log: list[str] = []
    errors: list[BaseException] = []
    lanes = [(tmp_path / "small", seed * 10, 4096), (tmp_path / "large", seed * 10 + 1, 1 << 20)]

    def lane(path: Path, lane_seed: int, segment_bytes: int) -> None:
        try:
            run_lane(path, lane_seed, segment_bytes, kills // len(lanes), deadline, log)
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=lane, args=args) for args in lanes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("\n".join(log))
    if errors:
        raise errors[0]
