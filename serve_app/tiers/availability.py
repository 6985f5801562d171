"""Which tiers have a replica to serve a request: Serve's own view, read in the background.

Ray Serve holds a call to a deployment without a running replica until one starts. When a GPU
node is lost, that is minutes (a new node, the weights, the engine's warm-up), so a request
routed to the dead tier waited out its whole deadline (120 s locally) before its 504, and took
an in-flight slot all that time. The ingress reads the tiers' replica states from Serve's
controller (every `ingress.tier_watch_s`) and treats a tier with no RUNNING replica as
unavailable: routed requests go to the other tier at once, and a request no tier can take gets
an immediate 503 with Retry-After.

A tier that may scale to zero (`min_replicas: 0`) is never unavailable: its first request is
what wakes it. If Serve cannot be read, every tier counts as available (the behaviour without
the watch), so the watch can only ever shorten a wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from serve_app.config import TierConfig, TierName, tier_deployment_name
from serve_app.protocol.errors import TierUnavailableError
from serve_app.tiers.ray_serve_internals import serve_details

logger = logging.getLogger("ray.serve")

RunningReplicas = Callable[[str, Mapping[TierName, str]], dict[TierName, int]]


class NoRunningReplicaError(TierUnavailableError):
    """A tier has no running replica: refused at once instead of waiting for one to start."""

    def __init__(self, tier: TierName, *, retry_after_s: float):
        super().__init__(
            f"The {tier} tier has no running replica (it is restarting or its node was lost).",
            retry_after_s=retry_after_s,
        )
        self.code = "tier_unavailable"


def running_replicas(app_name: str, deployments: Mapping[TierName, str]) -> dict[TierName, int]:
    """RUNNING replicas of each tier's deployment, from the Serve controller (blocking).

    Read from the controller's raw details (ray_serve_internals: 60 times cheaper than
    `serve.status()`, which builds the same answer as models); `serve.status()` where that
    read is not available.
    """
    details = serve_details()
    if details is None:
        from ray import serve

        application = serve.status().applications[app_name]
        return {
            tier: application.deployments[name].replica_states.get("RUNNING", 0)
            for tier, name in deployments.items()
        }
    app_deployments = details["applications"][app_name]["deployments"]
    return {
        tier: sum(
            _state_name(replica.get("state")) == "RUNNING"
            for replica in app_deployments[name].get("replicas", [])
        )
        for tier, name in deployments.items()
    }


def _state_name(state: Any) -> str:
    # A ReplicaState enum member in Ray 2.60's dict (a str enum), or its plain value.
    return str(getattr(state, "value", state))


def keeps_a_replica(tier: TierConfig) -> bool:
    """Whether the tier's deployment always has a replica (it does not scale to zero)."""
    deployment: dict[str, Any] = tier.deployment_config
    autoscaling = deployment.get("autoscaling_config")
    if autoscaling is not None:
        return autoscaling.get("min_replicas", 1) > 0
    return deployment.get("num_replicas", 1) != 0


class TierAvailability:
    def __init__(
        self,
        app_name: str,
        tiers: Mapping[TierName, TierConfig],
        poll_s: float,
        read: RunningReplicas = running_replicas,
    ):
        self.app_name = app_name
        self.poll_s = poll_s
        self._deployments = {name: tier_deployment_name(name) for name in tiers}
        self._watched = {name for name, tier in tiers.items() if keeps_a_replica(tier)}
        self._read = read
        self._down: frozenset[TierName] = frozenset()
        # Set when the tier goes down; a fresh event replaces it when the tier is back.
        self._went_down = {name: asyncio.Event() for name in tiers}
        self._task: asyncio.Task[None] | None = None
        self._read_failing = False

    def is_available(self, tier: TierName) -> bool:
        self._ensure_watching()
        return tier not in self._down

    def require(self, tier: TierName) -> None:
        """Raise NoRunningReplicaError when `tier` has no running replica."""
        if not self.is_available(tier):
            raise self.refusal(tier)

    def refusal(self, tier: TierName) -> NoRunningReplicaError:
        # The watch sees a replacement within one poll of it starting to serve.
        return NoRunningReplicaError(tier, retry_after_s=max(self.poll_s, 1.0))

    async def lost(self, tier: TierName) -> None:
        """Returns once `tier` has no running replica: a call already waiting on it (sent just
        before the watch saw the node go) is abandoned then, instead of at its deadline."""
        self._ensure_watching()
        await self._went_down[tier].wait()

    def _ensure_watching(self) -> None:
        # Started by the first request: the replica's event loop runs by then.
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.poll_s)

    async def refresh(self) -> None:
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
            # that lands as the read completes, and the watch would then outlive its loop.
            async with asyncio.timeout(max(self.poll_s, 1.0)):
                running = await asyncio.to_thread(self._read, self.app_name, self._deployments)
        except Exception as error:  # noqa: BLE001 - any failure means "unknown": assume up
            if not self._read_failing:
                logger.warning("Cannot read the tiers' replicas from Serve: %r", error)
            self._read_failing = True
            self._down = frozenset()
            return
        self._read_failing = False
        down = frozenset(t for t in self._watched if running.get(t, 0) == 0)
        if down != self._down:
            logger.warning("Tiers without a running replica: %s", sorted(down) or "none")
        for tier in down - self._down:
            self._went_down[tier].set()
        for tier in self._down - down:
            self._went_down[tier] = asyncio.Event()
        self._down = down
