"""`nokv lease` against the shared local cluster: grant, attach a key with `kv put --lease`,
list, keep alive (once and `--every`), revoke (the key goes), and one-line errors for a lease
that is gone."""

from __future__ import annotations

from cli_harness import ok, one_line_error, parsed, wait_for


def test_lease_grant_attach_keep_alive_list_and_revoke(cluster):
    lease = int(ok(cluster.run("lease", "grant", "60")).strip())
    assert lease > 0
    ok(cluster.run("kv", "put", "lscli/a", "1", "--lease", str(lease)))
    listed = parsed(cluster.run("lease", "list", "--json"))["leases"]
    assert {"lease_id": lease, "ttl": 60.0} in listed
    kept = parsed(cluster.run("lease", "keep-alive", str(lease), "--json"))
    assert kept == {"lease_id": lease, "ttl": 60.0}
    every = ok(cluster.run("lease", "keep-alive", str(lease), "--every", "0.4", "--duration",
                           "1"))
    assert 2 <= len(every.splitlines()) <= 4 and "kept alive for 60 s" in every
    assert "revoked" in ok(cluster.run("lease", "revoke", str(lease)))
    wait_for(lambda: cluster.run("kv", "get", "lscli/a").returncode == 1, 15,
             "the revoked lease's key to go")
    gone = cluster.run("lease", "keep-alive", str(lease))
    assert f"lease {lease} expired or was revoked" in one_line_error(gone, 1)
    refused = cluster.run("kv", "put", "lscli/b", "1", "--lease", str(lease))
    assert "expired or was revoked" in one_line_error(refused, 1)
    bad_ttl = cluster.run("lease", "grant", "0.5")
    assert "ttl must be 1 s to 86400 s" in one_line_error(bad_ttl, 1)
