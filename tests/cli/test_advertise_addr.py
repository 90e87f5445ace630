"""`--advertise-addr` of the serve commands: the address others dial, default the listen
address, a wildcard refused (nokvpy/cli/configfile.py `advertised`, raftstore/main.py).

The checks run in process; one small cluster of real processes (a metaroot listening on
0.0.0.0 with its --peer entry on loopback, a coordinator, a store listening on 0.0.0.0 and
advertising 127.0.0.1) shows the coordinator's store list holding the advertised address
and a client reaching the store through it. Every process is stopped in `finally`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_harness import nokv, nokv_many, one_line_error, parsed, wait_for

from nokvpy.cli import configfile
from nokvpy.cli.main import build_parser
from nokvpy.rpc.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
NEEDS = {"metaroot": ("--data", "m"), "coordinator": ("--metaroot", "127.0.0.1:2"),
         "store": ("--coordinator", "127.0.0.1:2", "--data", "s")}


def effective(kind: str, *argv: str) -> dict:
    values, _, _ = configfile.effective(build_parser(), kind, ["--id", "1", *NEEDS[kind], *argv])
    return values


def usage_error(capsys, kind: str, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        effective(kind, *argv)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nokv: "), lines
    return lines[0]


@pytest.mark.parametrize("kind", ["metaroot", "coordinator", "store"])
def test_the_default_is_the_listen_address(kind):
    assert effective(kind, "--listen", "127.0.0.1:7")["advertise_addr"] == "127.0.0.1:7"
    given = effective(kind, "--listen", "0.0.0.0:7", "--advertise-addr", "10.0.0.5:7")
    assert (given["listen"], given["advertise_addr"]) == ("0.0.0.0:7", "10.0.0.5:7")


@pytest.mark.parametrize("kind", ["metaroot", "coordinator", "store"])
@pytest.mark.parametrize("listen", ["0.0.0.0:7", "[::]:7", ":7"])
def test_a_wildcard_listen_without_an_advertised_address_is_refused(capsys, kind, listen):
    line = usage_error(capsys, kind, "--listen", listen)
    assert f"--listen {listen} is a wildcard address" in line
    assert "pass --advertise-addr HOST:PORT" in line


@pytest.mark.parametrize("addr,words", [("0.0.0.0:7", "is a wildcard"), ("[::]:7", "is a wildcard"),
                                        ("10.0.0.5", "expected host:port"),
                                        ("10.0.0.5:0", "the port must be 1-65535"),
                                        ("10.0.0.5:x", "expected host:port")])
def test_a_bad_advertised_address_is_refused(capsys, addr, words):
    line = usage_error(capsys, "store", "--listen", "127.0.0.1:7", "--advertise-addr", addr)
    assert line.startswith("nokv: argument --advertise-addr:") and words in line


def test_a_metaroot_advertises_its_peer_entry(capsys):
    """A wildcard --listen with this peer's --peer entry on a real address works; the entry
    and --advertise-addr must agree; a wildcard entry is refused."""
    peers = ("--peer", "1=127.0.0.1:7", "--peer", "2=127.0.0.2:7")
    values = effective("metaroot", "--listen", "0.0.0.0:7", *peers)
    assert values["advertise_addr"] == "127.0.0.1:7"
    assert effective("metaroot", "--listen", "0.0.0.0:7", "--advertise-addr", "127.0.0.1:7",
                     *peers)["advertise_addr"] == "127.0.0.1:7"
    line = usage_error(capsys, "metaroot", "--listen", "0.0.0.0:7", "--advertise-addr",
                       "127.0.0.9:7", *peers)
    assert "--advertise-addr 127.0.0.9:7 and this peer's --peer entry 1=127.0.0.1:7 disagree" in line
    line = usage_error(capsys, "metaroot", "--listen", "127.0.0.1:7", "--peer", "1=0.0.0.0:7")
    assert "--peer 1=0.0.0.0:7 is a wildcard address" in line
    # alone, without --peer: it founds its group at the advertised address
    values = effective("metaroot", "--listen", "0.0.0.0:7", "--advertise-addr", "127.0.0.1:7")
    assert values["peer"] == [] and values["advertise_addr"] == "127.0.0.1:7"


def test_refusals_exit_2_and_start_nothing(tmp_path):
    results = nokv_many(
        ("store", "serve", "--id", "1", "--listen", "0.0.0.0:1", "--coordinator", "127.0.0.1:2",
         "--data", tmp_path / "s"),
        ("metaroot", "serve", "--id", "1", "--listen", "0.0.0.0:1", "--data", tmp_path / "m"),
        ("coordinator", "serve", "--id", "1", "--listen", "127.0.0.1:1", "--metaroot",
         "127.0.0.1:2", "--advertise-addr", "0.0.0.0:1"))
    for result in results[:2]:
        assert "is a wildcard address" in one_line_error(result, 2)
    assert "argument --advertise-addr: '0.0.0.0:1' is a wildcard" in one_line_error(results[2], 2)
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


@pytest.mark.cluster
def test_a_store_on_a_wildcard_registers_its_advertised_address(tmp_path):
    meta, coord, store = free_ports(3)
    env = dict(os.environ, PYTHONPATH=str(ROOT), NOKV_CLUSTER_ID="adv")
    for name in ("NOKV_CLUSTER_SECRET", "NOKV_LOG_LEVEL", "NOKV_LOG_FORMAT", "NOKV_FAILPOINTS"):
        env.pop(name, None)
    commands = {
        "metaroot": ["--id", "1", "--listen", f"0.0.0.0:{meta}", "--peer", f"1=127.0.0.1:{meta}",
                     "--data", str(tmp_path / "m1")],
        "coordinator": ["--id", "1", "--listen", f"127.0.0.1:{coord}", "--metaroot",
                        f"127.0.0.1:{meta}", "--replication", "1", "--grant-ttl", "2"],
        "store": ["--id", "1", "--listen", f"0.0.0.0:{store}", "--advertise-addr",
                  f"127.0.0.1:{store}", "--coordinator", f"127.0.0.1:{coord}",
                  "--data", str(tmp_path / "s1")],
    }
    procs: dict[str, subprocess.Popen] = {}
    target = ("--coordinator", f"127.0.0.1:{coord}", "--timeout", "3")
    client = {"NOKV_CLUSTER_ID": "adv"}
    try:
        for kind, argv in commands.items():
            with (tmp_path / f"{kind}.log").open("wb") as log:
                procs[kind] = subprocess.Popen(
                    [sys.executable, "-m", "nokvpy.cli.main", kind, "serve", *argv], env=env,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def registered() -> list[dict]:
            for kind, proc in procs.items():
                assert proc.poll() is None, (tmp_path / f"{kind}.log").read_text()[-2000:]
            result = nokv("stores", "--json", *target, env=client)
            return json.loads(result.stdout) if result.returncode == 0 else []

        stores = wait_for(registered, 60, "the store to register with the coordinator")
        assert [(s["store_id"], s["address"]) for s in stores] == [(1, f"127.0.0.1:{store}")]

        def written() -> bool:
            return nokv("kv", "put", "k", "v", *target, env=client).returncode == 0

        wait_for(written, 60, "a write through the advertised address")
        assert parsed(nokv("kv", "get", "k", "--json", *target, env=client))["value"] == "v"
        log = (tmp_path / "store.log").read_text()
        assert f"serving on 0.0.0.0:{store}, advertised as 127.0.0.1:{store}" in log
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
