"""Percentile figures the benchmarks share: nearest rank, and a note when there are too few
samples for a figure to mean its name (a p99 of 10 samples is their maximum)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

# A percentile needs this many samples to mean its name; below it the figure is still given,
# with a ``*_note``.
MIN_SAMPLES = {50: 20, 99: 100}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank on the sorted values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def percentile_figure(figures: dict, key: str, values: Sequence[float], q: int) -> None:
    """``figures[key]``: the q-th percentile of ``values`` (the median for 50; None when there
    are none) and a ``key + "_note"`` when there are too few for it to mean its name. Every
    sample counts: none is clamped or dropped."""
    if not values:
        figures[key] = None
    else:
        figures[key] = round(statistics.median(values) if q == 50 else percentile(values, q), 1)
    if len(values) < MIN_SAMPLES[q]:
        figures[key + "_note"] = (
            f"p{q} of {len(values)} samples; it needs at least {MIN_SAMPLES[q]} to mean p{q}"
            + (" (not meaningful)" if q == 99 else "")
        )
