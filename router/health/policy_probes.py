"""Per-policy probes: each policy may check, on every node of its pool, the service it sends
clients to (a video path, a TLS port), and a node failing one policy's probe leaves only
that policy's answers.

The probe's ``url`` is a template: ``{health_url}``, ``{ipv4}``, ``{ipv6}`` and ``{id}`` are
the node's (``http(s)://`` must answer 2xx, ``tcp://host:port`` must accept a connection;
``router.health.probes``). ``failures`` failed probes in a row take the node out of the
policy; ``recover_after`` good ones in a row bring it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router.config.nodes import Node
from router.config.policy import PolicyProbe

PLACEHOLDERS = ("health_url", "ipv4", "ipv6", "id")


def probe_url(template: str, node: Node) -> str:
    return template.format(
        health_url=node.health_url or "", ipv4=str(node.ipv4), ipv6=f"[{node.ipv6}]", id=node.id
    )


@dataclass
class PolicyProbeResult:
    state: str  # "up" or "down"
    reason: str


class PolicyProbeState:
    """Probe verdicts per (policy, node); only policies with a probe have rows that can change."""

    def __init__(self, probes: list[PolicyProbe | None], node_ids: tuple[str, ...]) -> None:
        self.probes = probes
        self.index = {node_id: i for i, node_id in enumerate(node_ids)}
        shape = (len(probes), len(node_ids))
        self.down = np.zeros(shape, dtype=np.bool_)
        self.fail_streak = np.zeros(shape, dtype=np.int64)
        self.ok_streak = np.zeros(shape, dtype=np.int64)
        self.detail = [[""] * len(node_ids) for _ in probes]

    def report(self, policy: int, node_id: str, ok: bool, detail: str) -> bool:
        """One probe result; True when the node entered or left the policy."""
        probe = self.probes[policy]
        assert probe is not None
        n = self.index[node_id]
        self.detail[policy][n] = detail
        if ok:
            self.fail_streak[policy, n] = 0
            self.ok_streak[policy, n] += 1
            if self.down[policy, n] and self.ok_streak[policy, n] >= probe.recover_after:
                self.down[policy, n] = False
                return True
            return False
        self.ok_streak[policy, n] = 0
        self.fail_streak[policy, n] += 1
        if not self.down[policy, n] and self.fail_streak[policy, n] >= probe.failures:
            self.down[policy, n] = True
            return True
        return False

    def result(self, policy: int, node_id: str) -> PolicyProbeResult:
        n = self.index[node_id]
        if self.down[policy, n]:
            return PolicyProbeResult(
                "down",
                f"{self.fail_streak[policy, n]} failed policy probes ({self.detail[policy][n]})",
            )
        return PolicyProbeResult(
            "up", f"policy probe ok ({self.detail[policy][n] or 'not probed yet'})"
        )
