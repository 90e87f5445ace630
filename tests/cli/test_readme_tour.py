"""The README's five-minute tour, command by command, as a user would type it (slow tier).

Every line of the tour block runs in order against its own clusters in a temporary directory
(`./c` and `./c2` become directories under tmp_path, `c.bak` a file there), and must exit 0.
The commands that run until Ctrl-C get a bound (`watch --count 1`, `top --count 1`), the
bench and the jepsen run a short duration, and `ID` is the lease id `lease grant` printed.
Every process of both clusters is stopped in `finally` (`cluster down`, then SIGKILL of any
pid left).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_harness import kill_leftovers, nokv, ok

REPO = Path(__file__).resolve().parents[2]

# command prefix -> extra arguments that bound it (the README's form runs until Ctrl-C or
# for a minute)
BOUNDS = {
    ("watch",): ["--count", "1", "--duration", "20"],
    ("top",): ["--count", "1", "--interval", "0.5"],
}
SHORTER = {"--duration": "2", "--time-limit": "10"}


def tour_lines() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## A five-minute tour"):]
    block = section[section.index("```sh\n") + 6:]
    return [line for line in block[: block.index("```")].splitlines() if line.strip()]


def argv_of(line: str, tmp: Path, lease_id: str | None) -> list[str]:
    words = shlex.split(line, comments=True)
    assert words[0] == "nokv", line
    out = []
    for i, w in enumerate(words[1:]):
        if w in ("./c", "./c2"):
            w = str(tmp / w[2:])
        elif w == "c.bak":
            w = str(tmp / "c.bak")
        elif w == "ID":
            assert lease_id, "the tour uses ID before `lease grant` printed one"
            w = lease_id
        elif i > 0 and words[i] in SHORTER:
            w = SHORTER[words[i]]
        out.append(w)
    for prefix, extra in BOUNDS.items():
        if tuple(out[: len(prefix)]) == prefix:
            out += extra
    if out[:2] == ["jepsen", "run"]:
        out += ["--dir", str(tmp / "jepsen-run")]
    return out


def watch_while_writing(argv: list[str], directory: Path) -> subprocess.CompletedProcess:
    """Run the tour's `nokv watch` (bounded to one event) and put a key under its prefix
    until it exits: the watch sees the first put made after it opened, whenever that is."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "nokvpy.cli.main", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        n = 0
        while proc.poll() is None and time.monotonic() < deadline:
            n += 1
            ok(nokv("kv", "put", "user/9", f"tour{n}", "--dir", directory))
        out, err = proc.communicate(timeout=30)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_the_tour_block_is_what_this_test_expects():
    lines = tour_lines()
    assert lines[0].startswith("nokv cluster up --dir ./c")
    assert lines[-1].startswith("nokv cluster down --dir ./c")
    assert any(" --lease ID " in line for line in lines)
    for line in lines:  # every command the tour shows parses
        argv = argv_of(line, Path("/tmp/x"), "1")
        assert argv[0] != "nokv"


@pytest.mark.slow
@pytest.mark.cluster
def test_every_command_of_the_readme_tour_succeeds(tmp_path):
    lease_id = None
    done: list[str] = []
    try:
        for line in tour_lines():
            argv = argv_of(line, tmp_path, lease_id)
            if argv[:1] == ["watch"]:
                result = watch_while_writing(argv, tmp_path / "c")
            else:
                result = nokv(*argv, timeout=240)
            assert result.returncode == 0, (line, argv, result.stdout[-2000:],
                                            result.stderr[-2000:])
            if argv[:2] == ["lease", "grant"]:
                lease_id = re.search(r"\b(\d+)\b", ok(result)).group(1)
            done.append(line)
        assert len(done) == len(tour_lines())
    finally:
        for name in ("c", "c2"):
            directory = tmp_path / name
            if (directory / "cluster.json").exists():
                try:
                    subprocess.run([sys.executable, "-m", "nokvpy.cli.main", "cluster", "down",
                                    "--dir", str(directory)], capture_output=True, timeout=60,
                                   cwd=REPO, check=False)
                finally:
                    kill_leftovers(directory)
