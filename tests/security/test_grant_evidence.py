"""Grant evidence (issue 16 item 5): metaroot signs each grant it issues or renews (Ed25519,
key derived from the cluster secret); a coordinator attaches its region_lookup grant to
STRONG answers; the client checks the signature, the holder, the duty and the expiry before
it trusts a STRONG answer, and refuses one whose evidence does not check.

Pure checks of nokvpy.grantsig (hypothesis over tampered bytes), the client's refusal of
tampered, expired, foreign and missing evidence, and a real cluster (processes on loopback,
killed by pid in `finally`, files under tmp_path) whose STRONG answers carry evidence that
checks."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nokvpy import grantsig
from nokvpy.client import Client
from nokvpy.client.errors import RouteRejectedError
from nokvpy.protocol import Freshness
from nokvpy.protocol.grants import AuthorityGrant, Duty, DutyGrant, GrantEvidence
from nokvpy.protocol.records import RouteWitness

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"evidence-secret"
CLUSTER = "c1"


def grant(expires_in_ms: int = 5_000, holder: str = "coordinator-1#abcd",
          duty: Duty = Duty.REGION_LOOKUP) -> AuthorityGrant:
    now = int(time.time() * 1000)
    return AuthorityGrant("g-1", holder, 7, now - 1000, now + expires_in_ms,
                          (DutyGrant(duty, 100),))


def evidence(g: AuthorityGrant, secret: bytes = SECRET, cluster: str = CLUSTER) -> GrantEvidence:
    return GrantEvidence(g, grantsig.sign(grantsig.signing_key(secret), cluster, g))


def check(ev, *, secret=SECRET, cluster=CLUSTER, coordinator=1):
    return grantsig.verify(grantsig.public_key(secret), cluster, ev,
                           holder_prefix=f"coordinator-{coordinator}", duty=Duty.REGION_LOOKUP,
                           now_ms=int(time.time() * 1000))


def test_a_signed_live_grant_checks():
    g = grant()
    assert check(evidence(g)) == g


@pytest.mark.parametrize("make,reason", [
    (lambda: None, "grant_evidence_missing"),
    (lambda: evidence(grant(expires_in_ms=-1)), "grant_expired"),
    (lambda: evidence(grant(holder="coordinator-2#x")), "grant_holder_mismatch"),
    (lambda: evidence(grant(duty=Duty.TSO)), "grant_duty_missing"),
    (lambda: evidence(grant(), secret=b"another cluster's secret"), "grant_signature_invalid"),
    (lambda: evidence(grant(), cluster="another-cluster"), "grant_signature_invalid"),
])
def test_bad_evidence_is_refused(make, reason):
    with pytest.raises(grantsig.EvidenceError) as exc:
        check(make())
    assert exc.value.reason == reason


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_change_to_a_signed_grant_or_its_signature_is_refused(data):
    g = grant()
    ev = evidence(g)
    field = data.draw(st.sampled_from(["signature", "expires", "era", "holder_suffix"]))
    if field == "signature":
        i = data.draw(st.integers(0, len(ev.signature) - 1))
        bit = 1 << data.draw(st.integers(0, 7))
        sig = bytearray(ev.signature)
        sig[i] ^= bit
        bad = GrantEvidence(g, bytes(sig))
    elif field == "expires":
        bad = GrantEvidence(replace(g, expires_at_ms=g.expires_at_ms
                                    + data.draw(st.integers(1, 10**9))), ev.signature)
    elif field == "era":
        bad = GrantEvidence(replace(g, era=g.era + data.draw(st.integers(1, 1000))),
                            ev.signature)
    else:
        bad = GrantEvidence(replace(g, holder=g.holder + data.draw(st.text(min_size=1))),
                            ev.signature)
    with pytest.raises(grantsig.EvidenceError) as exc:
        check(bad)
    assert exc.value.reason == "grant_signature_invalid"


def witness(ev) -> RouteWitness:
    from nokvpy.protocol import (
        CatchUpState,
        DegradedMode,
        ServingClass,
        SyncHealth,
    )
    from nokvpy.protocol.records import RootToken

    return RouteWitness(RootToken(1, 5), RootToken(1, 5), 0, Freshness.STRONG, True,
                        CatchUpState.FRESH, DegradedMode.HEALTHY, ServingClass.AUTHORITATIVE,
                        SyncHealth.HEALTHY, 3, 1, ev)


@pytest.mark.parametrize("make,ok", [
    (lambda: evidence(grant()), True),
    (lambda: evidence(grant(expires_in_ms=-5)), False),
    (lambda: GrantEvidence(grant(), b"\0" * 64), False),
    (lambda: None, False),
])
def test_the_client_refuses_a_strong_answer_whose_evidence_does_not_check(make, ok):
    ev = make()  # built now: a grant's expiry is measured from when the test runs
    client = Client(["127.0.0.1:1"], cluster_id=CLUSTER, secret=SECRET)
    if ok:
        client._check_evidence(Freshness.STRONG, witness(ev))
    else:
        with pytest.raises(RouteRejectedError) as exc:
            client._check_evidence(Freshness.STRONG, witness(ev))
        assert exc.value.reason.startswith("grant_")
        assert client.stats["evidence_refused"] == 1
    client._check_evidence(Freshness.BOUNDED, witness(None))  # only STRONG claims a holder


@pytest.mark.cluster
async def test_strong_answers_of_a_real_cluster_carry_evidence_that_checks(local_cluster):
    c = local_cluster
    key = grantsig.public_key(c.spec.secret.encode())
    # a client holding only the client credential and the public key
    from nokvpy.rpc.identity import role_key

    async with Client(c.spec.coordinator_addrs(), cluster_id=c.spec.cluster_id,
                      credential=role_key(c.spec.secret.encode(), "client"),
                      grant_public_key=key) as client:
        route = await client.route(b"k", Freshness.STRONG)
        ev = route.witness.grant_evidence
        assert isinstance(ev, GrantEvidence)
        g = grantsig.verify(key, c.spec.cluster_id, ev,
                            holder_prefix=f"coordinator-{route.witness.coordinator_id}",
                            duty=Duty.REGION_LOOKUP, now_ms=int(time.time() * 1000))
        assert g.expires_at_ms - g.issued_at_ms <= 60_000
        scan = await client.scan_regions(freshness=Freshness.STRONG)
        assert scan.witness.grant_evidence is not None
        assert client.stats.get("evidence_refused", 0) == 0
        bounded = await client.route(b"k", Freshness.BOUNDED)
        assert bounded.witness.grant_evidence is None
