"""Files holding the cluster secret are readable by their owner only (issue 16, item 5).

`cluster.json` is created with mode 0600 whatever the umask, by writing a temporary file
created with that mode and renaming it (never a chmod after the secret is written), and a
cluster file left world-readable by an older version loses its group and world bits.
"""

from __future__ import annotations

import os
import stat

import pytest

from nokvpy.cluster import local
from nokvpy.cluster.local import LocalCluster


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    old = os.umask(0)  # the most permissive umask: every created file would be 0666
    try:
        yield
    finally:
        os.umask(old)


def test_cluster_file_is_created_owner_only(tmp_path, open_umask, monkeypatch):
    seen: list[tuple[str, int]] = []
    real_replace = os.replace

    def replace(src, dst):  # the temporary file is already 0600 when it takes the name
        seen.append((os.path.basename(dst), mode(src)))
        real_replace(src, dst)

    def chmod(*args, **kwargs):
        raise AssertionError("the secret must never exist with a wider mode, even briefly")

    monkeypatch.setattr(local.os, "replace", replace)
    monkeypatch.setattr(local.os, "chmod", chmod)
    lc = LocalCluster(tmp_path / "c")
    spec = lc.create(metaroots=1, coordinators=1, stores=1)
    assert spec.secret and spec.secret in lc.spec_path.read_text()
    assert mode(lc.spec_path) == 0o600
    assert seen == [("cluster.json", 0o600)]
    lc.save(spec)  # a rewrite keeps the mode and leaves no temporary file behind
    assert mode(lc.spec_path) == 0o600
    assert sorted(p.name for p in lc.root.iterdir()) == ["cluster.json"]
    assert lc.load() == spec


def test_an_old_world_readable_cluster_file_is_restricted_when_loaded(tmp_path):
    lc = LocalCluster(tmp_path / "c")
    spec = lc.create()
    os.chmod(lc.spec_path, 0o644)
    assert lc.load() == spec
    assert mode(lc.spec_path) == 0o600
