"""`nokv watch` against the shared local cluster: each change printed as it happens (text and
`--json`, one object per line), in order, only keys of the range, stopping after `--count`
changes or `--duration` seconds; bad arguments are usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cli_harness import REPO, ok, one_line_error


def _start_watch(cluster, *args: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-m", "nokvpy.cli.main", "watch", *args,
                             "--dir", str(cluster.dir)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stderr.readline()  # printed once every region of the range has its start
    assert line.startswith("watching "), line + proc.stderr.read()
    return proc


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "Traceback" not in err, err
    return out, err


def test_watch_prints_each_change_of_the_prefix_in_order(cluster):
    proc = _start_watch(cluster, "wcli/", "--json", "--count", "3")
    try:
        ok(cluster.run("kv", "put", "wcli/a", "1"))
        ok(cluster.run("kv", "put", "wcliX", "not in the prefix"))
        ok(cluster.run("kv", "delete", "wcli/a"))
        ok(cluster.run("kv", "put", "wcli/b", "0x00ff"))
    finally:
        out, _ = _finish(proc)
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["kind"], r["key"], r["value"]) for r in rows] == [
        ("put", "wcli/a", "1"), ("delete", "wcli/a", None), ("put", "wcli/b", "0x00ff")]
    assert [r["revision"] for r in rows] == sorted(r["revision"] for r in rows)
    assert all(r["region_id"] > 0 for r in rows)


def test_watch_text_output_and_duration(cluster):
    proc = _start_watch(cluster, "wclt/", "--end", "wclt0", "--duration", "3")
    try:
        ok(cluster.run("kv", "put", "wclt/k", "v"))
    finally:
        out, _ = _finish(proc)
    (line,) = out.splitlines()
    assert line.startswith("put    wclt/k = v  (rev ") and "region " in line, line


def test_watch_bad_arguments_are_usage_errors(cluster):
    inverted = cluster.run("watch", "b", "--end", "a")
    assert "empty or inverted range" in one_line_error(inverted, 1)
    bad_count = cluster.run("watch", "p", "--count", "0")
    assert bad_count.returncode == 2 and "--count" in bad_count.stderr
