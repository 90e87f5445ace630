"""Coordinator transitions (DESIGN 4.6): AssessRootEvent, PublishRootEvent (idempotent,
fenced by expected_cluster_epoch, visible to a STRONG read as soon as it returns),
ListTransitions with history, RemoveRegion."""

from __future__ import annotations

import pytest
from _coord_harness import bootstrapped, open_env, plan_split

from nokvpy.protocol import Freshness
from nokvpy.protocol.coordinator_rpc import (
    AssessRootEventRequest,
    GetRegionByKeyRequest,
    ListTransitionsRequest,
    PublishRootEventRequest,
    RemoveRegionRequest,
)
from nokvpy.protocol.enums import (
    AssessmentDecision,
    EventKind,
    RetryClass,
    ServingClass,
    TransitionKind,
    TransitionPhase,
)
from nokvpy.protocol.records import RootEvent
from nokvpy.rpc import RemoteError


async def test_publish_is_idempotent_fenced_and_visible_to_strong_reads(tmp_path):
    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True)
        _, d = await bootstrapped(env)
        epoch0 = (await env.diag(1))["subscription"]["cluster_epoch"]
        plan = await plan_split(env, d, b"m")
        tid = f"split:{d.region_id}:{b'm'.hex()}"

        assessed = (await env.call(1, AssessRootEventRequest(plan))).assessment
        assert assessed.decision == AssessmentDecision.APPLY
        assert assessed.transition_id == tid and assessed.kind == TransitionKind.SPLIT

        with pytest.raises(RemoteError) as err:  # fenced: wrong cluster epoch
            await env.call(1, PublishRootEventRequest(plan, expected_cluster_epoch=epoch0 + 7))
        assert err.value.kind == "rejected" and err.value.reason == "cluster_epoch_mismatch"
        assert err.value.details["assessment"].retry_class == RetryClass.REFRESH

        first = await env.call(1, PublishRootEventRequest(plan, expected_cluster_epoch=epoch0))
        assert first.accepted and first.assessment.decision == AssessmentDecision.APPLY
        second = await env.call(1, PublishRootEventRequest(plan, expected_cluster_epoch=epoch0))
        assert second.accepted and second.assessment.decision == AssessmentDecision.SKIP
        assert second.assessment.phase == TransitionPhase.ADMITTED
        assert second.token.index >= first.token.index

        listed = await env.call(1, ListTransitionsRequest())
        assert [(e.transition_id, e.phase) for e in listed.entries] == [
            (tid, TransitionPhase.ADMITTED)]
        assert listed.entries[0].source_token == first.token

        # a planned range change is never served as settled truth
        with pytest.raises(RemoteError) as err:
            await env.call(1, GetRegionByKeyRequest(b"a", Freshness.STRONG))
        assert err.value.reason == "range_change_pending"
        best = await env.call(1, GetRegionByKeyRequest(b"a", Freshness.BEST_EFFORT))
        assert best.witness.serving_class == ServingClass.DEGRADED

        # a conflicting plan on the same region is refused with a retry class
        other = await plan_split(env, plan.payload.right, b"t")
        with pytest.raises(RemoteError) as err:
            await env.call(1, PublishRootEventRequest(other))
        assert err.value.kind == "conflict" and err.value.reason == "pending_conflict"

        commit = RootEvent(EventKind.SPLIT_COMMITTED, plan.payload)
        done = await env.call(1, PublishRootEventRequest(commit))
        assert done.assessment.decision == AssessmentDecision.APPLY
        strong = await env.call(1, GetRegionByKeyRequest(b"z", Freshness.STRONG))
        assert strong.descriptor.region_id == plan.payload.right.region_id
        assert strong.witness.served_root_token.index >= done.token.index
        again = await env.call(1, PublishRootEventRequest(commit))
        assert again.assessment.decision == AssessmentDecision.SKIP

        history = await env.call(1, ListTransitionsRequest(include_history=True))
        assert [(e.transition_id, e.phase, e.source_token) for e in history.entries] == [
            (tid, TransitionPhase.COMPLETED, first.token)]
        assert (await env.call(1, ListTransitionsRequest())).entries == []


async def test_remove_region_tombstones_a_known_region_only(tmp_path):
    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True)
        _, d = await bootstrapped(env)
        plan = await plan_split(env, d, b"m", EventKind.SPLIT_COMMITTED)
        await env.call(1, PublishRootEventRequest(plan))
        missing = await env.call(1, RemoveRegionRequest(987654))
        assert missing.removed is False
        right = plan.payload.right.region_id
        removed = await env.call(1, RemoveRegionRequest(right))
        assert removed.removed is True
        reply = await env.call(1, GetRegionByKeyRequest(b"z", Freshness.STRONG))
        assert reply.descriptor is None  # served not_found, not an error
        twice = await env.call(1, RemoveRegionRequest(right))
        assert twice.removed is False
        history = await env.call(1, ListTransitionsRequest(include_history=True))
        assert (f"tombstone:{right}", TransitionPhase.COMPLETED) in [
            (e.transition_id, e.phase) for e in history.entries]
