"""Backup on a real cluster (the default run's; `nokv restore` into a second cluster is
tests/cli/test_cli_backup.py, slow tier): every key of every region, each region read at one
applied index, in a file that `read_backup` verifies (regions tiling the keyspace in order,
each key exactly once with its value); a flipped byte is refused."""

from __future__ import annotations

import pytest

from nokvpy.client.backup import BackupFormatError, backup, read_backup

pytestmark = pytest.mark.cluster

TOPO_OPTIONS = {"stores": 3}


async def test_a_backup_holds_every_key_of_every_region(module_topo, tmp_path):
    c = module_topo
    async with c.client() as client:
        for i in range(30):
            await client.put(b"bk/%02d" % i, b"value %d" % i)
        await client.put(b"bk/bin", bytes(range(256)))
        split = await c.split(client, b"bk/15")
        assert split.outcome == "APPLIED", split
        out = tmp_path / "c.bak"
        summary = await backup(client, out)
        everything = await client.scan(b"", b"", limit=100_000)
    header, regions = read_backup(out)
    assert summary.regions == len(regions) == header.regions >= 2
    assert [r.start_key for r in regions][0] == b"" and regions[-1].end_key == b""
    assert any(r.start_key == b"bk/15" for r in regions)
    pairs = [p for r in regions for p in r.pairs]
    assert pairs == list(everything) and summary.keys == len(pairs)
    assert all(r.applied_index > 0 for r in regions)
    data = bytearray(out.read_bytes())
    data[len(data) // 3] ^= 0x40
    out.write_bytes(bytes(data))
    with pytest.raises(BackupFormatError, match="checksum mismatch"):
        read_backup(out)
