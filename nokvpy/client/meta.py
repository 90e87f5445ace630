"""Client of the metaroot group: finds and follows the leader, leaves peers that hang.

Owns: which metaroot peer to ask, and the suspect list of metaroot peers. Writes and
ConfirmToken go to the leader (following the `leader_addr` hint of a not-leader refusal);
reads may go to any peer. A peer that timed out or could not be reached is suspect for a few
seconds (`failover.Suspects`): left out of the passes over the peers while another is not
suspect, and a hint naming it is not followed until its latest failure is `suspect_base`
seconds old. Each attempt lasts at most
`attempt_timeout`. Follows metaroot membership changes: a reply that carries the peer list
(`peers` with the raft `conf_index` of the membership it shows: status, ConfirmToken, a conf
change) replaces the addresses when its membership is newer than the last one seen.
Never interprets the answers otherwise, and never resends an append whose outcome
is unknown unless its events carry request ids.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import trio

from nokvpy.client.errors import OutcomeUnknownError, UnavailableError
from nokvpy.client.failover import SUSPECT_BASE, Suspects
from nokvpy.protocol.metaroot_rpc import AppendRequest, MetarootStatus, MetarootStatusRequest
from nokvpy.rpc import RemoteError, RpcClient, RpcTimeoutError, RpcUnavailableError


class MetaClient:
    def __init__(self, rpc: RpcClient, addrs: list[str], timeout: float = 5.0, *,
                 attempt_timeout: float = 3.0, suspect_base: float = SUSPECT_BASE):
        if not addrs:
            raise ValueError("at least one metaroot address is needed")
        self.rpc = rpc
        self.addrs = list(addrs)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.suspects: Suspects[str] = Suspects(suspect_base, 8 * suspect_base)
        self.leader: str | None = addrs[0] if len(addrs) == 1 else None
        self.conf_index = 0  # raft index of the newest metaroot membership seen (learn_peers)

    def learn_peers(self, reply: Any) -> bool:
        """Adopt the metaroot peer list a reply carries when its membership is newer than
        the last one seen (memberships are ordered by the raft index of their conf change);
        True when the addresses changed."""
        peers, index = getattr(reply, "peers", None), getattr(reply, "conf_index", 0)
        if not isinstance(peers, dict) or not peers or not isinstance(index, int) \
                or index <= self.conf_index:
            return False
        self.conf_index = index
        addrs = [a for _, a in sorted(peers.items()) if a]
        if not addrs or addrs == self.addrs:
            return False
        self.addrs = addrs
        if self.leader not in addrs:
            self.leader = None
        return True

    def _candidates(self) -> list[str]:
        """The peers to try in one pass: the believed leader first, then the others, leaving
        out suspects (all of them, earliest recovery first, when every peer is suspect)."""
        first = [] if self.leader is None else [self.leader]
        order = self.suspects.order(first + [a for a in self.addrs if a != self.leader],
                                    trio.current_time())
        healthy = [a for a in order if not self.suspects.is_suspect(a, trio.current_time())]
        return healthy or order

    async def call(self, request: Any, timeout: float | None = None, leader: bool = True) -> Any:
        """Call the leader (or any peer when `leader` is False), following hints, retrying
        briefly while an election runs. Raises RemoteError for a refusal that is not about
        leadership, UnavailableError when no peer answers."""
        timeout = timeout or self.timeout
        deadline = trio.current_time() + timeout
        last: Exception | None = None
        backoff = 0.02
        while trio.current_time() < deadline:
            for addr in self._candidates():
                remaining = deadline - trio.current_time()
                if remaining <= 0:
                    break
                try:
                    reply = await self.rpc.call(addr, request,
                                                timeout=min(remaining, self.attempt_timeout))
                except (RpcUnavailableError, RpcTimeoutError) as exc:
                    last = exc
                    self.suspects.mark(addr, trio.current_time())
                    if self.leader == addr:
                        self.leader = None
                    if not idempotent(request) and outcome_unknown(exc):
                        raise OutcomeUnknownError(
                            f"metaroot append to {addr} may or may not have applied ({exc}); "
                            "not retried because its events carry no request id") from None
                    continue
                except RemoteError as exc:
                    if exc.kind != "not_leader":
                        raise
                    last = exc
                    self.suspects.clear(addr)  # it answered
                    hint = exc.details.get("leader_addr") or ""
                    if hint and hint != addr:
                        self.leader = hint
                        if self.suspects.vouch(hint, trio.current_time()):
                            break  # retry at once against the hinted leader
                    continue
                self.suspects.clear(addr)
                if leader:
                    self.leader = addr
                self.learn_peers(reply)
                return reply
            else:
                await trio.sleep(min(backoff, max(0.0, deadline - trio.current_time())))
                backoff = min(backoff * 2, 0.3)
        raise UnavailableError(f"metaroot unavailable ({', '.join(self.addrs)}): {last}")

    async def status_all(self, timeout: float = 1.0) -> dict[str, MetarootStatus | Exception]:
        out: dict[str, MetarootStatus | Exception] = {}

        async def one(addr: str) -> None:
            try:
                out[addr] = await self.rpc.call(addr, MetarootStatusRequest(), timeout=timeout)
                self.learn_peers(out[addr])
            except Exception as exc:  # noqa: BLE001 - reported per peer
                out[addr] = exc

        async with trio.open_nursery() as n:
            for a in self.addrs:
                n.start_soon(one, a)
        return out

    @asynccontextmanager
    async def stream(self, request: Any):
        """A watch stream from the current leader (or any peer when none is known)."""
        addr = self._candidates()[0]
        async with self.rpc.stream(addr, request) as it:
            yield addr, it


def idempotent(request: Any) -> bool:
    """Every metaroot request is safe to resend except an append of events without request
    ids (a resend could append them twice); appends with ids are answered with their
    original tokens."""
    if isinstance(request, AppendRequest):
        return all(ev.request_id for ev in request.events)
    return True


def outcome_unknown(exc: Exception) -> bool:
    if isinstance(exc, RpcTimeoutError):
        return exc.sent
    return bool(getattr(exc, "outcome_unknown", False))
