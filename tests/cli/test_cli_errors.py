"""Every failure of `nokv` is one line on stderr with a non-zero exit status and no traceback:
bad flags and key formats (status 2), an unreachable cluster, a directory without a cluster,
a process that is not running or not answering, a process that dies while the cluster starts,
and a serve command given bad input (status 1)."""

from __future__ import annotations

import json
import socket

import pytest
from cli_harness import kill_leftovers, nokv, nokv_many, ok, one_line_error

USAGE = [
    ((), "the following arguments are required"),
    (("kv", "get"), "the following arguments are required: key"),
    (("kv", "frob"), "invalid choice: 'frob'"),
    (("kv", "get", "k", "--bogus"), "unrecognized arguments: --bogus"),
    (("kv", "get", "0xZZ"), "bad hex '0xZZ'"),
    (("kv", "put", "k", "0x123"), "bad hex '0x123'"),
    (("kv", "scan", "0xZZ"), "bad hex"),
    (("kv", "cas", "k", "0xQ", "-"), "bad hex"),
    (("route", "0xZZ"), "bad hex"),
    (("admin", "split", "0xZZ"), "bad hex"),
    (("route", "k", "--freshness", "eventual"), "invalid choice: 'eventual'"),
    (("route", "k", "--max-root-lag", "-1"), "must be 0 or more"),
    (("regions", "--timeout", "abc"), "invalid float value: 'abc'"),
    (("regions", "--timeout", "0"), "must be greater than 0"),
    (("kv", "scan", "--limit", "0"), "must be greater than 0"),
    (("admin", "merge", "one", "2"), "invalid int value: 'one'"),
    (("cluster", "up", "--metaroot", "2"), "invalid choice: 2"),
    (("cluster", "up", "--stores", "0"), "must be greater than 0"),
    (("cluster", "up", "--replication", "0"), "must be greater than 0"),
    (("cluster", "logs", "--lines", "-1"), "must be 0 or more"),
    (("bench", "puts", "--clients", "0"), "must be greater than 0"),
    (("store", "serve", "--listen", "127.0.0.1:1"), "required: --id"),
    (("kv", "get", "k", "--coordinator", "localhost"),
     "argument --coordinator: bad address 'localhost': expected host:port"),
    (("regions", "--coordinator", "127.0.0.1:1,localhost:x"), "bad address 'localhost:x'"),
    (("bench", "puts", "--coordinator", ","), "argument --coordinator: no address given"),
]


def test_usage_errors_exit_2_with_one_line(tmp_path):
    results = nokv_many(*(args + ("--dir", tmp_path) if args else () for args, _ in USAGE))
    for (args, expected), result in zip(USAGE, results, strict=True):
        line = one_line_error(result, 2)
        assert expected in line, (args, line)
        assert result.stdout == "", args
    assert not any(tmp_path.iterdir()), "a usage error touched the cluster directory"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_coordinator():
    addr = f"127.0.0.1:{free_port()}"
    commands = [("kv", "get", "k"), ("kv", "put", "k", "v"), ("route", "k"), ("stores", "--json"),
                ("diag",), ("admin", "tombstone", "1")]
    results = nokv_many(*(c + ("--coordinator", addr, "--timeout", "3") for c in commands),
                        ("bench", "puts", "--coordinator", addr, "--duration", "1"))
    for command, result in zip(commands + [("bench",)], results, strict=True):
        line = one_line_error(result, 1)
        assert addr in line and "no coordinator reachable" in line, (command, line)
        assert result.stdout == "", command


def test_directory_without_a_cluster(tmp_path):
    empty = tmp_path / "nothing-here"
    commands = [("kv", "get", "k"), ("execution", "store-1", "--json"), ("transitions", "show", "x"),
                ("cluster", "status"), ("cluster", "down"), ("cluster", "restart", "store-1"),
                ("bench", "puts", "--duration", "1")]
    results = nokv_many(*(c + ("--dir", empty) for c in commands))
    for command, result in zip(commands, results, strict=True):
        line = one_line_error(result, 1)
        assert f"no cluster in {empty}" in line, (command, line)
    assert not empty.exists(), "a read command created the cluster directory"


def test_coordinator_flag_needs_the_cluster_identity(cluster):
    addr = next(p["address"] for p in cluster.spec["processes"] if p["kind"] == "coordinator")
    line = one_line_error(nokv("regions", "--coordinator", addr), 1)
    tls = cluster.spec.get("tls")
    if tls:  # a TLS cluster (NOKV_TEST_TLS=1): a plain client does not get as far
        assert "does the server require TLS?" in line, line
    else:
        assert "handshake refused" in line and "NOKV_CLUSTER_ID" in line
    # with the cluster's id and secret (and TLS files), --coordinator works like --dir
    env = {"NOKV_CLUSTER_ID": cluster.spec["cluster_id"], "NOKV_CLUSTER_SECRET": cluster.spec["secret"]}
    if tls:  # the admin client's files
        env.update({"NOKV_TLS_CERT": tls["cert"], "NOKV_TLS_KEY": tls["key"],
                    "NOKV_TLS_CA": tls["ca"]})
    regions = json.loads(ok(nokv("regions", "--coordinator", addr, "--json", env=env)))
    assert regions["regions"]
    line = one_line_error(nokv("execution", "store-1", "--coordinator", addr, env=env), 1)
    assert "without --dir" in line


def test_unknown_process_and_transition(cluster):
    results = cluster.many(("execution", "store-9"), ("failpoint", "list", "nobody"),
                           ("cluster", "kill", "store-9"), ("cluster", "logs", "nobody"),
                           ("transitions", "show", "no-such-transition"),
                           ("execution", f"127.0.0.1:{free_port()}", "--timeout", "2"))
    for result in results[:4]:
        assert "no process named" in one_line_error(result, 1)
    assert "no transition 'no-such-transition'" in one_line_error(results[4], 1)
    assert "is unreachable" in one_line_error(results[5], 1)


_serve: dict[str, dict] = {}


def serve_refusals(cluster) -> dict[str, tuple]:
    port = free_port()
    data = {p["name"]: p["data_dir"] for p in cluster.spec["processes"]}
    commands = {
        "metaroot": ("metaroot", "serve", "--id", "1", "--listen", f"127.0.0.1:{port}", "--peer",
                     f"1=127.0.0.1:{port}", "--data", data["metaroot-1"], "--cluster-id", "another"),
        "store": ("store", "serve", "--id", "1", "--listen", f"127.0.0.1:{port}", "--coordinator",
                  "127.0.0.1:1", "--data", data["store-1"], "--cluster-id", "another"),
        "coordinator": ("coordinator", "serve", "--id", "1", "--listen", "127.0.0.1:notaport",
                        "--metaroot", "127.0.0.1:1"),
    }
    if "results" not in _serve:  # run once, checked by two tests
        _serve["results"] = dict(zip(commands, nokv_many(*commands.values()), strict=True))
    return _serve["results"]


EXPECTED_REFUSAL = {"metaroot": "belongs to cluster", "store": "refuses to start",
                    "coordinator": "bad address"}


def test_serve_refuses_bad_input_in_one_line(cluster):
    """A data directory of another cluster, or a bad address: refused with one line."""
    for kind, result in serve_refusals(cluster).items():
        output = (result.stdout + result.stderr).strip().splitlines()
        assert result.returncode == 1, (kind, result)
        assert len(output) == 1 and output[0].startswith(f"nokv {kind}: "), (kind, output)
        assert EXPECTED_REFUSAL[kind] in output[0], (kind, output)


def test_serve_refusals_go_to_stderr(cluster):
    for kind, result in serve_refusals(cluster).items():
        assert result.stdout == "" and EXPECTED_REFUSAL[kind] in result.stderr, kind


def test_process_dying_during_cluster_up_is_reported(tmp_path):
    from nokvpy.cluster.local import LocalCluster

    local = LocalCluster(tmp_path / "c")
    spec = local.create(stores=1, replication=1)
    spec.get("coordinator-1").extra_args = ["--replication", "0"]  # it refuses to start
    local.save(spec)
    try:
        result = nokv("cluster", "up", "--dir", local.root, "--wait", "40", timeout=60)
        # progress lines first, then the error: one line, and the only `nokv:` line
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert lines[0].startswith("cluster up: starting cluster")
        assert "cluster up: metaroot-1 started (pid " in result.stderr
        assert [line for line in lines if line.startswith("nokv: ")] == lines[-1:]
        assert "coordinator-1 exited during start-up" in lines[-1]
        assert "--replication must be >= 1" in lines[-1] and "coordinator-1.log" in lines[-1]
        # with --json there is no progress: the error is the only line
        line = one_line_error(nokv("cluster", "up", "--dir", local.root, "--json", timeout=60), 1)
        assert "coordinator-1 exited during start-up" in line
    finally:
        pids = {p.name: local.pid(p.name) for p in spec.processes}
        nokv("cluster", "down", "--dir", local.root, timeout=60)
        assert not kill_leftovers(local.root, {k: v for k, v in pids.items() if v})


@pytest.mark.parametrize("argv", [["kv", "get", "0xZZ"], ["cluster", "status", "--dir", "/nonexistent/x"]])
def test_in_process_main_returns_status_without_raising(argv, capsys):
    from nokvpy.cli.main import main

    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    assert status in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nokv: ")


def test_every_command_has_working_help():
    """`--help` of every command and subcommand formats (a stray % in a help text used to
    crash `nokv failpoint set --help`)."""
    import argparse

    from nokvpy.cli.main import build_parser

    def walk(parser: argparse.ArgumentParser, path: str):
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")

    seen = 0
    for path, parser in walk(build_parser(), "nokv"):
        text = parser.format_help()
        assert text.startswith("usage:"), path
        seen += 1
    assert seen > 30


def test_every_flag_argument_and_subcommand_has_help():
    """`--help` explains everything: no flag, positional argument or subcommand without a
    help text."""
    import argparse

    from nokvpy.cli.main import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    if not (helps.get(name) or "").strip():
                        missing.append(f"{path} {name}")
                    walk(sub, f"{path} {name}")
            elif not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "nokv")
    assert missing == []


def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    result = nokv("--version")
    assert ok(result).strip() == f"nokv {version('nokvpy')}" and result.stderr == ""
