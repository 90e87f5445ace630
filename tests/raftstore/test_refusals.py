"""Every refusal of a store is built by raftstore.admission: `refusal` attaches the hints of
its reason (one rule, the same for the admission decision and for refusals after it),
`rejection` / `refused` build the RemoteError. The store's `refuse` records the refusal and
takes the hints from the peer's view; no other raftstore module constructs a refusal error.
Pure, plus one Store on real LMDB (no raft underneath)."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

from nokvpy.protocol import (
    Admission,
    AdmissionClass,
    AdmissionReason,
    PeerMeta,
    RegionDescriptor,
    RegionEpoch,
)
from nokvpy.rpc import Identity, RpcClient
from nokvpy.storage import Env
from raftstore.admission import EPOCH_HINTED, RegionView, refusal, refused, rejection
from raftstore.store import Store, StoreConfig

R = AdmissionReason
ROOT = Path(__file__).resolve().parents[2]
DESC = RegionDescriptor(7, b"a", b"z", RegionEpoch(3, 2), (PeerMeta(1, 11), PeerMeta(2, 12)))
VIEW = RegionView(DESC, 11, False, 12, 2)
REFUSALS = [r for r in AdmissionReason if r != R.ACCEPTED]


@pytest.mark.parametrize("reason", REFUSALS)
def test_one_hint_rule_per_reason(reason):
    adm = refusal(AdmissionClass.WRITE, reason, "why", VIEW)
    assert (adm.cls, adm.reason, adm.detail) == (AdmissionClass.WRITE, reason, "why")
    assert (adm.leader_peer_id, adm.leader_store_id) == (12, 2)
    if reason in EPOCH_HINTED:
        assert (adm.current_epoch, adm.descriptor) == (DESC.epoch, DESC)
    else:
        assert (adm.current_epoch, adm.descriptor) == (None, None)
    # no region known: no hints at all
    assert refusal(AdmissionClass.WRITE, reason, "why") == Admission(AdmissionClass.WRITE,
                                                                     reason, "why")


def test_an_uninitialized_peer_gives_the_leader_but_no_epoch():
    view = RegionView(None, 11, False, 12, 2)
    adm = refusal(AdmissionClass.READ, R.EPOCH_MISMATCH, "why", view)
    assert (adm.leader_store_id, adm.current_epoch, adm.descriptor) == (2, None, None)


def test_the_errors_a_refusal_travels_as():
    adm = refusal(AdmissionClass.TOPOLOGY, R.NOT_LEADER, "not me", VIEW)
    err = rejection(adm)
    assert (err.kind, err.reason, err.message, err.details) == (
        "rejected", "NOT_LEADER", "not me", {"admission": adm})
    err = refused(R.NOT_LEADER, "forward failed", kind="unavailable", leader_store_id=3)
    assert (err.kind, err.reason, err.message, err.details) == (
        "unavailable", "NOT_LEADER", "forward failed", {"leader_store_id": 3})
    assert refused(R.INVALID, "bad").details == {}


async def test_the_store_refuses_through_admission_and_records_it(tmp_path):
    env = Env.open(tmp_path / "s")
    try:
        store = Store(StoreConfig(1, "nokv", "127.0.0.1:1"), env,
                      RpcClient(Identity("nokv", "store", 1)))
        peer = SimpleNamespace(view=lambda now: VIEW)
        err = store.refuse(AdmissionClass.WRITE, R.KEY_NOT_IN_REGION, "moved", peer)
        adm = err.details["admission"]
        assert adm == refusal(AdmissionClass.WRITE, R.KEY_NOT_IN_REGION, "moved", VIEW)
        assert store.tracker.admissions["WRITE/KEY_NOT_IN_REGION"] == 1
        assert store.tracker.last_admission[AdmissionClass.WRITE] is adm
        bare = store.refuse(AdmissionClass.READ, R.NOT_HOSTED, "gone").details["admission"]
        assert bare == Admission(AdmissionClass.READ, R.NOT_HOSTED, "gone")
    finally:
        env.close()


def _remote_error_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text())
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", "")) == "RemoteError"]


def test_no_other_module_builds_a_refusal_error():
    built = {p.relative_to(ROOT).as_posix(): lines
             for p in sorted((ROOT / "raftstore").rglob("*.py"))
             if (lines := _remote_error_calls(p))}
    # admission builds every refusal; kvpath's one is the write whose outcome is unknown
    # (a timeout, not a refusal)
    assert set(built) == {"raftstore/admission.py", "raftstore/kvpath.py"}, built
    assert len(built["raftstore/kvpath.py"]) == 1
    assert '"outcome_unknown"' in (ROOT / "raftstore/kvpath.py").read_text()
