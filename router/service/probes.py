"""The active probes of the config in service: each node's health URL (with telemetry on)
and each policy's own probe. Restarted whenever a reload puts a new config in service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from router.health.policy_probes import probe_url
from router.health.probes import run_probes

if TYPE_CHECKING:
    from router.service.supervisor import Supervisor

log = logging.getLogger("router.service")


class Probes:
    def __init__(self, service: Supervisor, telemetry: bool) -> None:
        self.service = service
        self.telemetry = telemetry  # node health URLs are probed only with telemetry on
        self.tasks: list[asyncio.Task] = []

    # -- what is probed ----------------------------------------------------------------

    def node_targets(self) -> dict[str, str]:
        return {n.id: n.health_url for n in self.service.deployment.inventory.nodes if n.health_url}

    def policy_targets(self) -> list[tuple[int, dict[str, str], float, float]]:
        """(policy, node -> url, interval, timeout) for every policy with a probe."""
        service = self.service
        out = []
        for p, compiled in enumerate(service.model.policies):
            probe = compiled.policy.probe
            if probe is None:
                continue
            nodes = [
                n
                for n, member in zip(service.deployment.inventory.nodes, compiled.in_pool)
                if member
            ]
            out.append(
                (
                    p,
                    {n.id: probe_url(probe.url, n) for n in nodes},
                    probe.interval_s,
                    probe.timeout_s,
                )
            )
        return out

    # -- running them (in the event loop) -------------------------------------------------

    def restart(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks = []
        targets = self.node_targets() if self.telemetry else {}
        if targets:
            health = self.service.deployment.health
            assert health is not None
            probe = run_probes(
                targets, health.probe_interval_s, health.probe_timeout_s, self.on_probe
            )
            self.tasks.append(asyncio.create_task(probe))
        for policy, targets, interval, timeout in self.policy_targets():

            def report(node_id: str, ok: bool, detail: str, policy: int = policy) -> None:
                self.on_policy_probe(policy, node_id, ok, detail)

            self.tasks.append(asyncio.create_task(run_probes(targets, interval, timeout, report)))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks = []

    # -- their results ----------------------------------------------------------------------

    def on_probe(self, node_id: str, ok: bool, detail: str) -> None:
        service = self.service
        if service.cluster is not None:
            # Several routers: this result is one router's word; a quorum of them decides.
            service.cluster.probe_result(node_id, ok, detail)
            return
        with service.health_lock:
            if node_id not in service.health:
                return  # a probe started before a reload dropped the node
            changed = service.health.probe(node_id, ok, detail, time.monotonic())
            if changed:
                service.save_state()
        if changed:
            service.publisher.request_rebuild()

    def on_policy_probe(self, policy: int, node_id: str, ok: bool, detail: str) -> None:
        """One result of a policy's own probe; a node entering or leaving it re-plans."""
        service = self.service
        with service.health_lock:
            config = service.config
            if policy >= len(config.model.policies) or node_id not in config.node_index:
                return  # a probe of a config a reload replaced
            changed = config.policy_probes.report(policy, node_id, ok, detail)
        if changed:
            leaves = config.policy_probes.down[policy, config.node_index[node_id]]
            log.warning("node %s %s policy %s: %s", node_id, "leaves" if leaves else "returns to",
                        config.model.policies[policy].label, detail)  # fmt: skip
            service.publisher.request_rebuild()
