"""``health:`` in ``deployment.yaml`` and the settings the node monitor runs with.

The settings live here, not in ``router.health``, so that the config knows nothing of the
health package: health reads its settings from the config, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class HealthSettings:
    heartbeat_interval_s: float = 1.0
    missed_heartbeats: int = 3
    recover_after: int = 3
    hold_down_s: float = 10.0
    max_hold_down_s: float = 160.0
    high_water: float = 0.9  # load / capacity above which a node drains
    startup_grace_s: float = 10.0  # never heard from since start: down after this
    probe_failures: int = 3  # consecutive failed active probes: down

    @property
    def silence_bound_s(self) -> float:
        return self.missed_heartbeats * self.heartbeat_interval_s


class HealthConfig(BaseModel):
    """``health:`` in ``deployment.yaml``: heartbeat telemetry and its hysteresis."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: str  # the per-node HMAC keys file, relative to deployment.yaml; never in zone files
    heartbeat_interval_s: float = Field(default=1.0, gt=0, le=60)
    missed_heartbeats: int = Field(default=3, ge=1, le=100)
    recover_after: int = Field(default=3, ge=1, le=100)
    hold_down_s: float = Field(default=10.0, ge=0, le=3600)
    max_hold_down_s: float = Field(default=160.0, ge=0, le=86400)
    replay_window_s: float = Field(default=5.0, gt=0, le=300)
    high_water: float = Field(default=0.9, gt=0, le=2)
    startup_grace_s: float = Field(default=10.0, ge=0, le=3600)
    probe_interval_s: float = Field(default=2.0, gt=0, le=600)
    probe_timeout_s: float = Field(default=1.0, gt=0, le=60)
    probe_failures: int = Field(default=3, ge=1, le=100)  # consecutive failed probes: down

    def settings(self) -> HealthSettings:
        return HealthSettings(
            heartbeat_interval_s=self.heartbeat_interval_s, missed_heartbeats=self.missed_heartbeats,
            recover_after=self.recover_after, hold_down_s=self.hold_down_s,
            max_hold_down_s=max(self.max_hold_down_s, self.hold_down_s), high_water=self.high_water,
            startup_grace_s=self.startup_grace_s, probe_failures=self.probe_failures,
        )  # fmt: skip
