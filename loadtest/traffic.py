"""Traffic shapes: client queries per second at time t of a run."""

from __future__ import annotations

import math

import numpy as np

from loadtest.scenario import Traffic


def rate(traffic: Traffic, duration_s: float, t: float) -> float:
    """Offered client queries per second at ``t`` seconds into a run of ``duration_s``."""
    base = traffic.qps
    peak = traffic.peak_qps if traffic.peak_qps is not None else base
    if traffic.shape == "steady":
        return base
    if traffic.shape == "ramp":
        return base + (peak - base) * min(max(t / duration_s, 0.0), 1.0)
    if traffic.shape == "flash":
        assert traffic.flash_at_s is not None
        start, rise, hold = traffic.flash_at_s, traffic.flash_rise_s, traffic.flash_hold_s
        if t < start or t > start + 2 * rise + hold:
            return base
        if t < start + rise:
            return base + (peak - base) * (t - start) / rise
        if t <= start + rise + hold:
            return peak
        return peak - (peak - base) * (t - start - rise - hold) / rise
    # diurnal: a trough at the start, the evening peak half a period later
    period = traffic.period_s or duration_s
    return base + (peak - base) * (1 - math.cos(2 * math.pi * t / period)) / 2


def peak_rate(traffic: Traffic, duration_s: float, step_s: float = 0.05) -> float:
    steps = max(1, int(duration_s / step_s))
    return max(rate(traffic, duration_s, i * duration_s / steps) for i in range(steps + 1))


def expected_queries(traffic: Traffic, duration_s: float, step_s: float = 0.05) -> float:
    steps = max(1, int(duration_s / step_s))
    dt = duration_s / steps
    return sum(rate(traffic, duration_s, (i + 0.5) * dt) * dt for i in range(steps))


def carry_step(
    previous_gbps: np.ndarray | None, answers: np.ndarray, gbps_per_qps: float, session_s: float
) -> np.ndarray:
    """Each node's load this second from last second's and the answers naming it this second.

    Traffic outlives the answer that started it, so load follows the answers smoothed
    exponentially over ``session_s``. A run starts from no load of its own (``previous_gbps``
    None): its sessions build up over the first ``session_s`` or so, as after a cold start.
    """
    keep = math.exp(-1.0 / session_s)
    previous = 0.0 if previous_gbps is None else previous_gbps
    return keep * previous + (1 - keep) * answers * gbps_per_qps


def carried_gbps(
    answers_per_second: np.ndarray, gbps_per_qps: float, session_s: float
) -> np.ndarray:
    """float64[N, S] answers per node and second -> the load each node carries, in Gbps."""
    out = np.zeros(answers_per_second.shape, dtype=np.float64)
    for s in range(answers_per_second.shape[1]):
        out[:, s] = carry_step(
            out[:, s - 1] if s else None, answers_per_second[:, s], gbps_per_qps, session_s
        )
    return out
