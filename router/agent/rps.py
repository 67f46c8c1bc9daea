"""Requests per second the cache serves, from its Prometheus metrics or from a command.

``--rps-metric NAME`` sums every series of NAME on the page; ``NAME{label="value",...}``
only the series carrying those labels. A counter (``# TYPE NAME counter``, or a name ending
in ``_total``) becomes a rate: the growth of each series between two reads over the time
between them, a series that went backwards counted from 0 (a restart), as Prometheus's
``rate()`` does; a series new on the page counts from its second read. A gauge is taken as
it is: it already is requests per second.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence

from router.agent.bounded import ReadError, fetch_url, run_command

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*\"")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}

Labels = tuple[tuple[str, str], ...]


def _labels(text: str, start: int) -> tuple[Labels, int]:
    """The ``{...}`` label set at ``text[start] == "{"``; returns it and the index after ``}``."""
    labels = []
    i = start + 1
    while True:
        while i < len(text) and text[i] in " \t,":
            i += 1
        if i < len(text) and text[i] == "}":
            return tuple(sorted(labels)), i + 1
        match = _LABEL.match(text, i)
        if not match:
            raise ValueError(f"bad label set at column {i + 1}")
        i = match.end()
        value = []
        while i < len(text) and text[i] != '"':
            if text[i] == "\\" and i + 1 < len(text):
                value.append(_ESCAPES.get(text[i + 1], "\\" + text[i + 1]))
                i += 2
            else:
                value.append(text[i])
                i += 1
        if i >= len(text):
            raise ValueError("unterminated label value")
        labels.append((match.group(1), "".join(value)))
        i += 1


def parse_metric_spec(spec: str) -> tuple[str, Labels]:
    """``NAME`` or ``NAME{label="value",...}``; ValueError if it is neither."""
    spec = spec.strip()
    match = _NAME.match(spec)
    if not match:
        raise ValueError(f"--rps-metric: {spec!r} is not a metric name")
    rest = spec[match.end() :]
    if not rest:
        return spec, ()
    if not rest.startswith("{"):
        raise ValueError(f'--rps-metric: expected NAME or NAME{{label="value"}}, got {spec!r}')
    labels, end = _labels(spec, match.end())
    if spec[end:].strip():
        raise ValueError(f"--rps-metric: unexpected {spec[end:]!r} after the labels")
    return match.group(), labels


def parse_samples(text: str, name: str, want: Labels = ()) -> tuple[dict[Labels, float], str]:
    """The series of ``name`` carrying the labels ``want``, and the metric's kind
    (``counter`` or ``gauge``), from a page in the Prometheus text format."""
    types: dict[str, str] = {}
    series: dict[Labels, float] = {}
    wanted = set(want)
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            words = line.split()
            if len(words) >= 4 and words[1] == "TYPE":
                types[words[2]] = words[3]
            continue
        match = _NAME.match(line)
        if not match or match.group() != name:
            continue
        end = match.end()
        labels: Labels = ()
        if line[end : end + 1] == "{":
            try:
                labels, end = _labels(line, end)
            except ValueError:
                continue  # a line we cannot read is not ours to judge
        if not wanted <= set(labels):
            continue
        fields = line[end:].split()
        try:
            value = float(fields[0])
        except (IndexError, ValueError):
            continue
        if math.isfinite(value):
            series[labels] = value
    if not series:
        where = f"{name}{{{', '.join(f'{k}={v!r}' for k, v in want)}}}" if want else name
        raise ReadError(f"no series {where} on the page")
    base = name.removesuffix("_total")
    kind = types.get(name) or types.get(base)
    if kind is None or kind in ("untyped", "unknown"):
        kind = "counter" if name.endswith("_total") else "gauge"
    return series, ("counter" if kind == "counter" else "gauge")


class CounterRate:
    """The per-second growth of a set of counter series between reads."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[Labels, float]] | None = None

    def update(self, now: float, series: dict[Labels, float]) -> float | None:
        last, self._last = self._last, (now, dict(series))
        if last is None or now <= last[0]:
            return None
        grown = 0.0
        for labels, value in series.items():
            before = last[1].get(labels)
            if before is not None:
                grown += value - before if value >= before else value
        return grown / (now - last[0])


class PrometheusRps:
    def __init__(
        self, url: str, metric: str, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.url = url
        self.name, self.labels = parse_metric_spec(metric)
        self.metric = metric
        self.timeout = timeout
        self.clock = clock
        self._rate = CounterRate()

    def describe(self) -> str:
        return f"{self.metric} at {self.url}"

    def read(self) -> float | None:
        text = fetch_url(self.url, self.timeout)
        now = self.clock()
        series, kind = parse_samples(text, self.name, self.labels)
        if kind == "gauge":
            return max(0.0, sum(series.values()))
        rate = self._rate.update(now, series)
        return None if rate is None else round(rate, 3)


class CommandRps:
    """A command that prints the requests per second (a number)."""

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        self.argv = list(argv)
        self.timeout = timeout

    def describe(self) -> str:
        return f"command {' '.join(self.argv)}"

    def read(self) -> float:
        out = run_command(self.argv, self.timeout).strip()
        try:
            value = float(out.split()[0]) if out else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise ReadError(f"{self.argv[0]} printed {out[:40]!r}, not a number of requests/s")
        return value
