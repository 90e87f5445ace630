"""`--config FILE` of the serve commands and `nokv config show` (nokvpy/cli/configfile.py).

Parsing and precedence run in process (the parser of `nokv` and the config module, no
subprocess); the error cases run once more as real `nokv` commands, which must exit 2 with
one line naming the file and the key and start nothing; one metaroot started from a file
serves on a free loopback port and is stopped in `finally`. The documented example file of
docs/operations.md ("Configuration files") is checked as well.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import trio
from cli_harness import nokv, nokv_many, ok, one_line_error

from nokvpy.cli import configfile
from nokvpy.cli.main import build_parser
from nokvpy.cli.main import main as nokv_main
from nokvpy.protocol.metaroot_rpc import MetarootStatusRequest
from nokvpy.rpc import Identity, RpcClient
from nokvpy.rpc.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
ENV = ("NOKV_CLUSTER_ID", "NOKV_LOG_LEVEL", "NOKV_LOG_FORMAT", "NOKV_SCHEDULER")

HOST_FILE = """\
cluster-id = "c1"
log_level = "debug"

[metaroot]
id = 1
listen = "0.0.0.0:2380"
peer = { 1 = "127.0.0.1:2380" }
data = "m1"

[coordinator]
id = 2
listen = "127.0.0.1:2379"
metaroot = ["127.0.0.1:2380", "127.0.0.1:2381"]
grant-ttl = 5

[store]
id = 3
listen = "127.0.0.1:20160"
coordinator = "127.0.0.1:2379"
data = "s1"
tick_ms = 50
enable-failpoints = true
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str, name: str = "nokv.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def effective(kind: str, *argv: object):
    """(values, sources) of `nokv KIND serve ARGV`, in process."""
    values, sources, _ = configfile.effective(build_parser(), kind, [str(a) for a in argv])
    return values, sources


def usage_error(capsys, kind: str, *argv: object) -> str:
    """The one line `nokv KIND serve ARGV` refuses with (exit status 2)."""
    with pytest.raises(SystemExit) as stop:
        effective(kind, *argv)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nokv: "), lines
    return lines[0]


# ---- parsing -------------------------------------------------------------------------------

def test_one_host_file_configures_every_kind(tmp_path):
    path = write(tmp_path, HOST_FILE)
    values, sources = effective("store", "--config", path)
    assert values["id"] == 3 and values["listen"] == "127.0.0.1:20160"
    assert values["tick_ms"] == 50 and values["enable_failpoints"] is True
    assert values["coordinator"] == "127.0.0.1:2379" and values["data"] == "s1"
    assert values["cluster_id"] == "c1" and values["log_level"] == "debug"  # top-level keys
    assert values["watch_keep"] == 4096 and sources["watch_keep"] == "default"
    assert sources["tick_ms"] == sources["cluster_id"] == "file"

    values, _ = effective("coordinator", "--config", path)
    assert values["metaroot"] == "127.0.0.1:2380,127.0.0.1:2381"  # an array, joined
    assert values["grant_ttl"] == 5.0 and isinstance(values["grant_ttl"], float)
    assert values["replication"] == 3

    values, _ = effective("metaroot", "--config", path)
    assert values["peer"] == ["1=127.0.0.1:2380"]  # a table id = address
    assert values["listen"] == "0.0.0.0:2380"
    assert values["advertise_addr"] == "127.0.0.1:2380"  # its --peer entry


def test_flags_override_the_file_which_overrides_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NOKV_CLUSTER_ID", "from-env")
    monkeypatch.setenv("NOKV_LOG_LEVEL", "warning")
    monkeypatch.setenv("NOKV_LOG_FORMAT", "json")
    monkeypatch.setenv("NOKV_SCHEDULER", "split_keys=10")
    path = write(tmp_path, '[coordinator]\nid = 1\nlisten = "127.0.0.1:1"\nmetaroot = "127.0.0.1:2"'
                           '\ncluster-id = "from-file"\nlog-level = "error"\n')
    values, sources = effective("coordinator", "--config", path, "--log-level", "debug", "--id", 7)
    assert (values["log_level"], sources["log_level"]) == ("debug", "flag")  # flag > file
    assert (values["id"], sources["id"]) == (7, "flag")
    assert (values["cluster_id"], sources["cluster_id"]) == ("from-file", "file")  # file > env
    assert (values["log_format"], sources["log_format"]) == ("json", "env")  # env > default
    assert (values["scheduler"], sources["scheduler"]) == ("split_keys=10", "env")
    assert (values["grant_ttl"], sources["grant_ttl"]) == (6.0, "default")
    # without a file: the flag, then the environment
    values, sources = effective("coordinator", "--id", 1, "--listen", "127.0.0.1:1",
                                "--metaroot", "127.0.0.1:2")
    assert (values["cluster_id"], sources["cluster_id"]) == ("from-env", "env")
    assert sources["config"] == "default" and values["config"] is None


def test_keys_take_dashes_or_underscores_and_lists(tmp_path):
    path = write(tmp_path, '[metaroot]\nid = 2\nlisten = "127.0.0.1:3"\ndata = "d"\n'
                           'retained_tail = 7\npeer = ["1=127.0.0.1:2", "2=127.0.0.1:3"]\n'
                           'join = true\nmetrics_addr = "127.0.0.1:9100"\n')
    values, _ = effective("metaroot", "--config", path)
    assert values["retained_tail"] == 7 and values["join"] is True
    assert values["peer"] == ["1=127.0.0.1:2", "2=127.0.0.1:3"]
    assert values["metrics_addr"] == "127.0.0.1:9100"
    # --peer on the command line replaces the file's list (a flag overrides the key)
    values, sources = effective("metaroot", "--config", path, "--peer", "2=127.0.0.1:3")
    assert values["peer"] == ["2=127.0.0.1:3"] and sources["peer"] == "flag"


def test_required_flags_may_come_from_either_place(tmp_path, capsys):
    path = write(tmp_path, '[store]\nid = 1\ndata = "d"\n')
    values, sources = effective("store", "--config", path, "--listen", "127.0.0.1:5",
                                "--coordinator", "127.0.0.1:6")
    assert (sources["id"], sources["listen"]) == ("file", "flag")
    line = usage_error(capsys, "store", "--config", path)
    assert "the following arguments are required: --listen, --coordinator" in line
    assert "--config file" in line and "--id" not in line.split("(")[0]
    line = usage_error(capsys, "metaroot", "--listen", "127.0.0.1:5")
    assert "required: --id, --data" in line
    # as commands: argparse's own message without --config, the same list with one
    with_file = write(tmp_path, '[store]\nid = 1\n', "id.toml")
    results = nokv_many(("store", "serve", "--listen", "127.0.0.1:1"),
                        ("store", "serve", "--listen", "127.0.0.1:1", "--config", with_file),
                        ("store", "serve", "--listen", "127.0.0.1:1", f"--conf={with_file}"))
    assert "the following arguments are required: --id, --coordinator, --data" in \
        one_line_error(results[0], 2)
    for result in results[1:]:
        line = one_line_error(result, 2)
        assert "required: --coordinator, --data (as flags or as keys of the --config" in line


BAD_FILES = [
    ("[store]\ntick-ms = \"100\"\n", "[store] tick-ms: expected an integer, got \"100\" (a string)"),
    ("[store]\ntick-ms = 1.5\n", "[store] tick-ms: expected an integer, got 1.5 (a number)"),
    ("[store]\nid = true\n", "[store] id: expected an integer, got true (a boolean)"),
    ("[coordinator]\ngrant-ttl = \"6\"\n", "[coordinator] grant-ttl: expected a number"),
    ("[store]\nwatch-keep = -1\n", "[store] watch-keep: must be 0 or more, got '-1'"),
    ("[store]\nlog-level = \"loud\"\n",
     "[store] log-level: expected one of debug, info, warning, error, got \"loud\""),
    ("[store]\nmetrics-addr = \"0.0.0.0:9100\"\n", "[store] metrics-addr: metrics address "
                                                   "'0.0.0.0:9100' is a wildcard"),
    ("[store]\nenable-failpoints = \"yes\"\n",
     "[store] enable-failpoints: expected true or false"),
    ("[store]\ncoordinator = 2379\n",
     "[store] coordinator: expected a string or an array of strings, got 2379"),
    ("[store]\ncoordinator = \"localhost\"\n", "[store] coordinator: bad address 'localhost'"),
    ("[metaroot]\npeer = [\"one\"]\n", "[metaroot] peer: bad peer 'one': expected ID=HOST:PORT"),
    ("[metaroot]\npeer = \"1=127.0.0.1:2\"\n", "[metaroot] peer: expected an array of strings"),
    ("[metaroot]\npeer = { 1 = 2380 }\n",
     "[metaroot] peer: expected a table of id = \"host:port\", got 2380 (an integer)"),
    ("[store]\ncoordinator = []\n", "[store] coordinator: no address given"),
    ("[store]\nadvertise-addr = \"0.0.0.0:5\"\n", "[store] advertise-addr: '0.0.0.0:5' is a "
                                                  "wildcard"),
    ("[store]\nfrob = 1\n", "[store] frob: unknown key: not a flag of `nokv store serve`"),
    ("[store]\nmetaroot = \"127.0.0.1:2\"\n",
     "[store] metaroot: unknown key: not a flag of `nokv store serve`"),
    ("[store]\ngrant-ttl = 1\n", "[store] grant-ttl: unknown key"),
    ("[store]\nconfig = \"other.toml\"\n", "[store] config: unknown key"),
    ("[store]\ntick-ms = 1\ntick_ms = 2\n", "[store] tick_ms: given twice (as tick-ms too)"),
    ("data = \"d\"\n", "data: not a flag of every serve command: put it in a [metaroot] or "
                       "[store] table"),
    ("frob = 1\n", "frob: unknown key: expected a flag every serve command has"),
    ("store = 1\n", "store: expected a table [store]"),
    ("[stores]\nid = 1\n", "stores: unknown key"),
    # another kind's table is checked too, whichever kind reads the file
    ("[coordinator]\nreplication = \"3\"\n", "[coordinator] replication: expected an integer"),
    ("[store\nid = 1\n", "not a valid TOML file"),
    ("id = 1\nid = 2\n", "not a valid TOML file"),
]


@pytest.mark.parametrize("text,expected", BAD_FILES)
def test_a_bad_file_is_a_usage_error_naming_the_file_and_key(tmp_path, capsys, text, expected):
    path = write(tmp_path, text)
    line = usage_error(capsys, "store", "--config", path, "--id", 1, "--listen", "127.0.0.1:1",
                       "--coordinator", "127.0.0.1:2", "--data", tmp_path / "d")
    assert line.startswith(f"nokv: --config {path}: "), line
    assert expected in line, line


def test_an_unreadable_file_is_a_usage_error(tmp_path, capsys):
    line = usage_error(capsys, "store", "--config", tmp_path / "missing.toml")
    assert f"--config {tmp_path / 'missing.toml'}: cannot read it: No such file" in line
    path = write(tmp_path, "")
    path.write_bytes(b"id = \"\xff\"\n")
    assert "not a valid TOML file" in usage_error(capsys, "store", "--config", path)


def test_bad_files_exit_2_with_one_line_and_start_nothing(tmp_path):
    """As real commands: exit status 2, one line on stderr, nothing on stdout, no data dir."""
    cases = [BAD_FILES[0], BAD_FILES[6], BAD_FILES[13], BAD_FILES[-2],
             ('[store]\nlisten = "0.0.0.0:5"\n', "is a wildcard address"),
             (None, "cannot read it: No such file")]
    commands = []
    for i, (text, _) in enumerate(cases):
        path = write(tmp_path, text, f"bad{i}.toml") if text else tmp_path / "nope.toml"
        listen = [] if text and "listen" in text else ["--listen", "127.0.0.1:1"]
        commands.append(("store", "serve", "--config", path, "--id", "1", *listen,
                         "--coordinator", "127.0.0.1:1", "--data", tmp_path / f"s{i}"))
    for (_, expected), result in zip(cases, nokv_many(*commands), strict=True):
        line = one_line_error(result, 2)
        assert expected in line and "--config " in line, line
        assert result.stdout == ""
    assert not list(tmp_path.glob("s*")), "a usage error created a data directory"


# ---- nokv config show ----------------------------------------------------------------------

def test_config_show_prints_each_value_with_its_source(tmp_path, capsys):
    path = write(tmp_path, HOST_FILE)
    assert nokv_main(["config", "show", "--kind", "store", "--config", str(path),
                      "--log-format", "json"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("# nokv store serve: effective configuration")
    assert f"# --config {path}" in lines and "[store]" in lines
    row = {ln.split(" = ")[0]: ln for ln in lines if " = " in ln and not ln.startswith("#")}
    assert row["tick-ms"].split("#")[0].strip() == "tick-ms = 50" and row["tick-ms"].endswith("# file")
    assert row["log-format"].endswith("# flag") and row["watch-keep"].endswith("# default")
    assert row["advertise-addr"].endswith("# default: the --listen address")
    assert any(ln.startswith("# metrics-addr is not set") for ln in lines)
    # the text is a config file: read back, it gives the same values
    again = write(tmp_path, text, "again.toml")
    assert tomllib.loads(text)["store"]["tick-ms"] == 50
    assert effective("store", "--config", again)[0] == {
        **effective("store", "--config", path, "--log-format", "json")[0], "config": str(again)}


def test_config_show_json_and_its_errors(tmp_path):
    path = write(tmp_path, HOST_FILE)
    env = {"NOKV_LOG_LEVEL": "warning"}
    shown = nokv("config", "show", "--kind", "metaroot", "--config", path, "--json",
                 "--retained-tail", "9", env=env)
    doc = json.loads(ok(shown))
    assert doc["kind"] == "metaroot" and doc["config"] == str(path)
    values = doc["values"]
    assert values["retained-tail"] == {"value": 9, "source": "flag"}
    assert values["log-level"] == {"value": "debug", "source": "file"}  # file > env
    assert values["peer"] == {"value": ["1=127.0.0.1:2380"], "source": "file"}
    assert values["advertise-addr"] == {"value": "127.0.0.1:2380", "source": "default",
                                        "note": "this peer's --peer entry"}
    assert values["join"] == {"value": False, "source": "default"}
    no_file = json.loads(ok(nokv("config", "show", "--kind", "coordinator", "--json", "--id", "1",
                                 "--listen", "127.0.0.1:1", "--metaroot", "127.0.0.1:2", env=env)))
    assert no_file["config"] is None
    assert no_file["values"]["log-level"] == {"value": "warning", "source": "env"}
    # the usage errors serve would stop at
    results = nokv_many(("config", "show", "--kind", "store", "--config", path, "--bogus"),
                        ("config", "show", "--kind", "store"),
                        ("config", "show", "--id", "1"),
                        ("config", "show", "--kind", "coordinator", "--config", path,
                         "--tls-cert", "c.pem"))
    expected = ["unrecognized arguments: --bogus",
                "required: --id, --listen, --coordinator, --data",
                "required: --kind", "--tls-cert, --tls-key and --tls-ca go together"]
    for words, result in zip(expected, results, strict=True):
        assert words in one_line_error(result, 2)


def test_the_documented_file_and_output_are_true(tmp_path, capsys, monkeypatch):
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("## Configuration files"):]
    example = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    path = write(tmp_path, example, "host1.toml")
    for kind in ("metaroot", "coordinator", "store"):
        values, _ = effective(kind, "--config", path)
        assert values["cluster_id"] == "prod" and values["log_format"] == "json"
    sample = re.search(r"\$ nokv config show (.*?)\n(.*?)\n\.\.\.\n", section, re.S)
    argv = sample.group(1).split()
    monkeypatch.chdir(tmp_path)
    assert nokv_main(["config", "show", *argv]) == 0
    assert capsys.readouterr().out.startswith(sample.group(2) + "\n")


# ---- a real process ------------------------------------------------------------------------

@pytest.mark.cluster
async def test_a_metaroot_started_from_a_config_file_serves(tmp_path):
    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"
    path = write(tmp_path, f'cluster-id = "cfg"\nlog-format = "json"\n\n[metaroot]\nid = 1\n'
                           f'listen = "{addr}"\ndata = "{tmp_path / "m1"}"\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name in ENV + ("NOKV_CLUSTER_SECRET",):
        env.pop(name, None)
    err = tmp_path / "metaroot.err"
    with err.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nokvpy.cli.main", "metaroot", "serve",
                                 "--config", str(path)],
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        async with RpcClient(Identity("cfg", "admin", 1), backoff_max=0.1) as rpc:
            with trio.fail_after(30):
                while True:
                    assert proc.poll() is None, err.read_text()
                    try:
                        if (await rpc.call(addr, MetarootStatusRequest(), 2)).is_leader:
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
    events = [json.loads(ln) for ln in err.read_text().splitlines() if ln.strip()]
    assert any(e["msg"].startswith(f"metaroot-1 serving on {addr}, advertised as {addr}")
               for e in events), events  # log-format and the address came from the file
    assert (tmp_path / "m1").is_dir()


def test_the_required_flags_are_the_ones_the_parsers_require():
    """Without --config argparse requires them itself (its own message); with one, the config
    module checks the same list once the file is read."""
    from nokvpy.cli.flags import SERVE_REQUIRED

    root = build_parser()
    for kind, needed in SERVE_REQUIRED.items():
        parser = configfile.serve_parser(root, kind)
        assert {a.dest for a in parser._actions if a.required} == set(needed), kind
