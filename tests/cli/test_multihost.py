"""A cluster across three hosts, started by hand as docs/operations.md says ("Across hosts").

Each host is a network namespace with its own address (tests/cli/netns_hosts.py). The test
runs the documentation's block itself: its serve commands inside the host the block names,
its other commands from outside every host, after replacing the documentation's 10.0.0.x by
the test's subnet. Then the tour's core commands run against that cluster over the bridge:
compare-and-swap, scan, route reads, a split, transitions, execution and diagnostics of a
store on another host, replica digests, and a read after kill -9 of a store.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import pytest
from cli_harness import nokv, ok, parsed, wait_for
from netns_hosts import Hosts, unavailable

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "operations.md"
DOC_NET = "10.0.0."


def doc_block() -> list[str]:
    """The code block of docs/operations.md's "Across hosts" section, line by line."""
    text = DOC.read_text()
    section = text[text.index("### Across hosts"):]
    block = section[section.index("```\n") + 4:]
    return block[: block.index("```")].splitlines()


def parse_block(lines: list[str]) -> list[tuple[str, int | None, dict[str, str], list[str]]]:
    """(what, host, env, argv) per command: what is "serve" (started in host: the last octet of
    its address) or "run" (host None); env is what the block exported on that host."""
    steps, host, envs = [], None, {}
    for line in lines:
        if not line.strip():
            continue
        if line.startswith("# host "):
            host = int(re.match(r"# host 10\.0\.0\.(\d+)", line).group(1))
            continue
        if line.startswith("# any host"):
            host = None
            continue
        if line.startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        if words[0] == "export":
            envs[host] = dict(w.split("=", 1) for w in words[1:])
            continue
        assert words[0] == "nokv", line
        # "any host, the same two variables set": the exports of the hosts above
        env = envs.get(host) or next(iter(envs.values()))
        steps.append(("serve" if "serve" in words else "run", host, env, words[1:]))
    return steps


def test_the_documented_block_names_three_hosts_and_sets_the_secret_on_each():
    steps = parse_block(doc_block())
    serves = [(host, argv[0]) for what, host, _, argv in steps if what == "serve"]
    assert sorted({h for h, _ in serves}) == [1, 2, 3]
    assert [kind for _, kind in serves] == ["metaroot", "coordinator", "store", "store", "store"]
    assert all(env.get("NOKV_CLUSTER_SECRET") for _, _, env, _ in steps)


@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
def test_three_hosts_in_network_namespaces_serve_the_tour(tmp_path):
    with Hosts(3) as hosts:
        net = hosts.prefix

        def here(words: list[str]) -> list[str]:
            return [w.replace(DOC_NET, net) for w in words]

        def cli(env: dict[str, str], *args: object, timeout: float = 30.0):
            return nokv(*here([str(a) for a in args]), env=env, timeout=timeout)

        steps = parse_block(doc_block())
        served: dict[tuple[int, str], object] = {}
        client_env: dict[str, str] = {}
        base = dict(os.environ)
        base["PYTHONPATH"] = str(REPO) + os.pathsep + base.get("PYTHONPATH", "")
        for what, host, env, argv in steps:
            if what == "serve":
                home = tmp_path / f"host{host}"
                home.mkdir(exist_ok=True)
                argv = here(argv)
                proc = hosts.popen(host, [sys.executable, "-m", "nokvpy.cli.main", *argv],
                                   env={**base, **env}, cwd=home, log=home / f"{argv[0]}.log")
                served[(host, f"{argv[0]}-{argv[argv.index('--id') + 1]}")] = proc
                continue
            client_env = env
            if not any(s[0] == "run" for s in steps[: steps.index((what, host, env, argv))]):
                # the first client command: once a region's leader answers a linearizable read
                probe = ("kv", "get", "probe", "--json", "--coordinator", f"{DOC_NET}1:2379")

                def serving(probe=probe, env=env) -> bool:
                    for (h, name), proc in served.items():
                        if proc.poll() is not None:
                            log = tmp_path / f"host{h}" / f"{name.split('-')[0]}.log"
                            pytest.fail(f"{name} on host {h} exited: {log.read_text()[-2000:]}")
                    return cli(env, *probe).returncode == 0

                wait_for(serving, 90, "the three-host cluster to serve a linearizable read "
                         f"(logs in {tmp_path}/host*)")
            ok(cli(env, *argv))
        for (host, name), proc in served.items():
            assert proc.poll() is None, f"{name} on host {host} exited (log in {tmp_path})"

        target = ("--coordinator", f"{DOC_NET}1:2379")
        # the block's own reads saw its write
        assert parsed(cli(client_env, "kv", "get", "user/1", "--json", *target))["value"] == "alice"
        ok(cli(client_env, "kv", "cas", "user/1", "alice", "bob", *target))
        scan = parsed(cli(client_env, "kv", "scan", "user/", "user0", "--json", *target))
        assert [(p["key"], p["value"]) for p in scan["pairs"]] == [("user/1", "bob")]
        strong = parsed(cli(client_env, "route", "user/1", "--freshness", "strong", "--json", *target))
        assert not strong["rejected"], strong
        assert strong["descriptor"]["region_id"] == 1
        addresses = {p["address"] for p in parsed(cli(client_env, "stores", "--json", *target))}
        assert addresses == {f"{net}{i}:20160" for i in (1, 2, 3)}, addresses
        ok(cli(client_env, "admin", "split", "user/5", *target, timeout=60))
        regions = parsed(cli(client_env, "regions", "--json", *target))["regions"]
        assert len(regions) == 2
        ok(cli(client_env, "transitions", "list", *target))
        # a store on another host, by its address
        execution = cli(client_env, "execution", f"{DOC_NET}2:20160", "--json", *target)
        assert json.loads(ok(execution))
        ok(cli(client_env, "diag", *target))

        # kill -9 of the store on host 2: its regions keep serving from hosts 1 and 3
        victim = served[(2, "store-2")]
        victim.kill()
        victim.wait(timeout=10)
        assert parsed(cli(client_env, "kv", "get", "user/1", "--json", *target,
                          timeout=60))["value"] == "bob"
        ok(cli(client_env, "kv", "put", "user/7", "carol", *target, timeout=60))
        # host 2 comes back with the same command line; the replicas agree again
        what, host, env, argv = next(s for s in steps if s[0] == "serve" and s[1] == 2)
        hosts.popen(2, [sys.executable, "-m", "nokvpy.cli.main", *here(argv)],
                    env={**base, **env}, cwd=tmp_path / "host2", log=tmp_path / "host2" / "store.log")

        def digests_agree():
            result = cli(client_env, "regions", "digest", "--json", *target)
            if result.returncode != 0:
                return False
            rows = json.loads(result.stdout)["regions"]
            return len(rows) == 2 and all(r["verdict"] == "agree" and len(r["replicas"]) == 3
                                          for r in rows)

        deadline = time.monotonic() + 60
        wait_for(digests_agree, max(1.0, deadline - time.monotonic()),
                 "every replica of both regions to agree after store 2 restarted")
