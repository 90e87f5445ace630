"""The client's side of transactions, range deletes and scan limits, on a scripted network
(two regions split at b"m", one store): the builders, what is refused before anything is
sent (bad input, keys spanning regions), and how a scan and a range delete walk the regions
and say where the limit cut them."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from nokvpy.client import (
    Client,
    Compare,
    InvalidRequestError,
    Op,
    ScanResult,
    TxnGetResult,
)
from nokvpy.protocol import PeerMeta, RegionDescriptor, RegionEpoch
from nokvpy.protocol.coordinator_rpc import GetRegionByKeyRequest, RouteReply
from nokvpy.protocol.store_rpc import (
    CompareOp,
    CompareTarget,
    DeleteRangeReply,
    DeleteRangeRequest,
    ScanReply,
    ScanRequest,
    TxnOp,
    TxnOpKind,
    TxnReply,
    TxnRequest,
)

EPOCH = RegionEpoch(2, 1)
LEFT = RegionDescriptor(1, b"", b"m", EPOCH, (PeerMeta(1, 101),))
RIGHT = RegionDescriptor(2, b"m", b"", EPOCH, (PeerMeta(1, 102),))


class FakeNet:
    """A coordinator (c1) routing by LEFT / RIGHT and one store (s1) holding `data`; scans
    and range deletes answer at most `page` keys at a time, as a store's limits would."""

    def __init__(self, page: int = 1000) -> None:
        self.data: dict[bytes, bytes] = {}
        self.sent: list[Any] = []
        self.page = page

    async def call(self, addr: str, req: Any, timeout: float) -> Any:
        await trio.sleep(0)
        if isinstance(req, GetRegionByKeyRequest):
            desc = LEFT if LEFT.contains(req.key) else RIGHT
            return RouteReply(desc, None, 1, {1: "s1"})
        self.sent.append(req)
        desc = LEFT if req.ctx.region_id == 1 else RIGHT
        assert req.ctx.epoch == EPOCH
        if isinstance(req, TxnRequest):
            return TxnReply(9, True, [])
        lo = max(req.start_key, desc.start_key)
        hi = min(req.end_key or b"\xff" * 8, desc.end_key or b"\xff" * 8)
        keys = sorted(k for k in self.data if lo <= k < hi)
        if isinstance(req, ScanRequest):
            n = min(req.limit, self.page)
            return ScanReply([(k, self.data[k]) for k in keys[:n]], len(keys) > n, 9,
                             keys[n] if len(keys) > n else b"")
        assert isinstance(req, DeleteRangeRequest)
        n = min(req.limit or self.page, self.page)
        for k in keys[:n]:
            del self.data[k]
        return DeleteRangeReply(9, len(keys[:n]), len(keys) > n, keys[n] if len(keys) > n else b"")

    async def aclose(self) -> None:
        pass


def client(net: FakeNet) -> Client:
    return Client(["c1"], rpc=net)  # type: ignore[arg-type]


def test_builders_make_the_wire_records():
    assert Compare.value(b"k", "!=", b"v").op == CompareOp.NE
    assert Compare.exists(b"k").target == CompareTarget.EXISTS
    assert Compare.missing(b"k").op == CompareOp.NE
    seen = TxnGetResult(b"k", b"v", 12, 3)
    mod = Compare.mod(b"k", "==", seen)
    assert (mod.target, mod.mod_index, mod.mod_region) == (CompareTarget.MOD, 12, 3)
    assert (Compare.mod(b"k", "==", 0).mod_index, Compare.mod(b"k", "==", 0).mod_region) == (0, 0)
    assert Op.put(b"k", b"v") == TxnOp(TxnOpKind.PUT, b"k", b"v")
    assert Op.get(b"k").kind == TxnOpKind.GET and Op.delete(b"k").kind == TxnOpKind.DELETE
    with pytest.raises(InvalidRequestError, match="'==' or '!='"):
        Compare.value(b"k", "<", b"v")
    with pytest.raises(InvalidRequestError, match="GET result or an index"):
        Compare.mod(b"k", "==", -1)
    page = ScanResult([(b"a", b"1")], True, b"b")
    assert page == [(b"a", b"1")] and page.more and page.next_key == b"b"


async def test_bad_input_is_refused_before_anything_is_sent():
    net = FakeNet()
    c = client(net)
    with pytest.raises(InvalidRequestError, match="at least one"):
        await c.txn()
    with pytest.raises(InvalidRequestError, match="built with Op"):
        await c.txn(success=[("put", b"k", b"v")])
    with pytest.raises(InvalidRequestError, match="keys are bytes"):
        await c.txn([Compare.exists("k")])
    with pytest.raises(InvalidRequestError, match="values are bytes"):
        await c.txn(success=[Op.put(b"k", "v")])
    with pytest.raises(InvalidRequestError, match="empty range"):
        await c.delete_range(b"a", b"a")
    with pytest.raises(InvalidRequestError, match="inverted range"):
        await c.delete_range(b"b", b"a")
    with pytest.raises(InvalidRequestError, match="positive int or None"):
        await c.delete_range(b"a", b"b", 0)
    with pytest.raises(InvalidRequestError, match="positive int"):
        await c.scan(b"a", b"b", 0)
    assert net.sent == []


async def test_a_txn_spanning_regions_is_refused_locally_naming_them():
    net = FakeNet()
    c = client(net)
    with pytest.raises(InvalidRequestError) as info:
        await c.txn([Compare.exists(b"a")], [Op.put(b"z", b"1"), Op.put(b"b", b"2")])
    exc = info.value
    assert exc.reason == "cross_region" and exc.details["outside"] == [b"z"]
    assert "region 1" in str(exc) and "b'z' (region 2)" in str(exc)
    assert net.sent == []
    result = await c.txn([Compare.exists(b"a")], [Op.put(b"b", b"2")])
    assert result.succeeded and [type(r).__name__ for r in net.sent] == ["TxnRequest"]
    assert net.sent[0].ctx.region_id == 1


async def test_scan_walks_regions_and_says_where_the_limit_cut_it():
    net = FakeNet(page=3)
    net.data = {k: b"v" for k in (b"a", b"b", b"c", b"l", b"m", b"n", b"o")}
    c = client(net)
    whole = await c.scan(b"", b"", 100)
    assert [k for k, _ in whole] == sorted(net.data) and not whole.more
    assert whole.next_key is None
    # the left region holds exactly 4 keys: one more key from the right one says "more"
    cut = await c.scan(b"", b"", 4)
    assert [k for k, _ in cut] == [b"a", b"b", b"c", b"l"]
    assert cut.more and cut.next_key == b"m"
    cut = await c.scan(b"b", b"n", 3)
    assert [k for k, _ in cut] == [b"b", b"c", b"l"] and cut.next_key == b"m"
    exact = await c.scan(b"b", b"n", 4)
    assert [k for k, _ in exact] == [b"b", b"c", b"l", b"m"] and not exact.more


async def test_delete_range_goes_region_by_region_and_reports_each():
    net = FakeNet(page=2)
    net.data = {k: b"v" for k in (b"a", b"b", b"c", b"l", b"m", b"n", b"o")}
    c = client(net)
    cut = await c.delete_range(b"b", b"", limit=3)
    assert (cut.deleted, cut.more, cut.next_key) == (3, True, b"m")  # probed past "l"
    assert [(r.region_id, r.start, r.end, r.deleted) for r in cut.regions] == [
        (1, b"b", b"m", 3)]
    rest = await c.delete_range(b"", b"")
    assert (rest.deleted, rest.more, rest.next_key) == (4, False, None)
    assert [(r.region_id, r.start, r.end, r.deleted) for r in rest.regions] == [
        (1, b"", b"m", 1), (2, b"m", b"", 3)]
    assert net.data == {}
    # pages of at most 2 keys an entry, one entry after the other in the same region
    assert sum(isinstance(r, DeleteRangeRequest) and r.ctx.region_id == 2
               for r in net.sent) == 2
