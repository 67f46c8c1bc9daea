"""A load-test result (the content of ``result.json``) as one self-contained ``report.html``.

The page is what a person reads after a run: the headline figures, the checks the scenario
stated and whether they held, a table per failure and recovery, and the plots that show *why*
a figure is what it is:

- ``latency-cdf``: the distribution of wire latency, p50 and p99 marked;
- ``qps-rcodes``: queries per second and response codes per second over the run, with every
  failure and recovery marked;
- ``failover-<i>``: per failure, answers per 100 ms bin around it and the answers that still
  named a failed node, against the detection bound;
- ``node-load``: each node's load against its capacity, per second (overload in red);
- ``client-map``: where client groups are and which node they were sent to.

Every plot is a PNG embedded as a ``data:`` URI and the page loads nothing else (no CDN, no
fonts, no scripts from elsewhere), so the file can be attached to a ticket or opened offline.
A tiny inline script records in ``<body data-plots-loaded data-plots-total>`` how many plot
images the browser decoded, which the headless-browser test reads back.

Usage: ``python loadtest/report.py result.json [-o OUT_DIR]`` (default: the result's directory).
"""

from __future__ import annotations

import argparse
import base64
import functools
import html
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps, font_manager, ft2font
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from matplotlib.transforms import blended_transform_factory

PLOTS = ("latency-cdf", "qps-rcodes", "node-load", "client-map")
MAX_FAILOVER_PLOTS = 12  # past this the page gets long; the failures table has every figure
DPI = 100
MISSING = "\u2013"  # en dash: fine in HTML, never drawn into a plot

FAILURE_COLOUR = "#c62828"
RECOVERY_COLOUR = "#2e7d32"
# Fixed colours so the same rcode looks the same in every report.
RCODE_COLOURS = {
    "NOERROR": "#4c9f70",
    "NXDOMAIN": "#4a78b5",
    "REFUSED": "#e08a2c",
    "SERVFAIL": "#c62828",
    "FORMERR": "#8e5ea2",
    "NOTIMP": "#a0522d",
    "timeout": "#333333",
    "unanswered": "#9e9e9e",
}

SUMMARY_FIELDS = (
    ("qps", "answered queries per second"),
    ("latency_ms_p50", "wire latency p50 (ms)"),
    ("latency_ms_p99", "wire latency p99 (ms)"),
    ("best_node_share", "answers with the best node first (router's view of the client)"),
    ("best_node_in_answer_share", "answers naming the best node anywhere (router's view)"),
    ("client_best_node_share", "answers with the best node first (client's own location)"),
    ("overloaded_node_seconds", "node-seconds above capacity"),
    ("timeout_share", "share of queries to the router that timed out"),
    ("cache_hit_share", "share of client queries answered from the resolver cache"),
    ("ecs_share", "share of queries to the router carrying ECS"),
    ("client_queries", "client queries"),
    ("wire_queries", "queries sent to the router"),
    ("duration_s", "duration (s)"),
    ("router", "router (DNS address)"),
)

CSS = """
body { font-family: sans-serif; color: #111; background: #fff; margin: 1.5em auto; max-width: 1100px; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
p.description { color: #333; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.banner { font-weight: bold; font-size: 1.2em; padding: 0.4em 0.8em; display: inline-block; border-radius: 4px; }
.passed { background: #e3f4e6; color: #1b5e20; border: 1px solid #2e7d32; }
.failed { background: #fbe4e4; color: #8e0000; border: 1px solid #c62828; }
td.ok { color: #1b5e20; font-weight: bold; }
td.fail { color: #8e0000; font-weight: bold; }
figure { margin: 1em 0 2em 0; }
figure img.plot { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #333; font-size: 0.92em; margin-top: 0.3em; }
p.note { color: #8e0000; }
"""

# Counts the plots the browser actually decoded: the headless test reads it from the dumped DOM.
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img.plot");
  var loaded = 0;
  imgs.forEach(function (img) { if (img.complete && img.naturalWidth > 0) { loaded += 1; } });
  document.body.dataset.plotsLoaded = String(loaded);
  document.body.dataset.plotsTotal = String(imgs.length);
});
"""


# --- text ------------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


@functools.cache
def _drawable() -> frozenset[int]:
    """Code points the default font has: anything else would draw as a box and warn."""
    path = font_manager.findfont(font_manager.FontProperties())
    return frozenset(ft2font.FT2Font(path).get_charmap())


def _plain(text: Any) -> str:
    """Text from the result made safe for a plot: no missing glyphs, no accidental mathtext."""
    chars = _drawable()
    out = "".join(c if (ord(c) in chars or c == "\n") else "?" for c in str(text))
    return out.replace("$", r"\$")


def _fmt(value: Any) -> str:
    """A figure for a table cell (not yet escaped)."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        return f"{value:.4g}"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _cell(value: Any, num: bool | None = None) -> str:
    numeric = isinstance(value, int | float) and not isinstance(value, bool) if num is None else num
    cls = ' class="num"' if numeric else ""
    return f"<td{cls}>{_esc(_fmt(value))}</td>"


def _table(head: Sequence[str], rows: Iterable[str]) -> str:
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    return (
        f"<table>\n<thead><tr>{th}</tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody>\n</table>"
    )


def _nodes(nodes: Any) -> str:
    return ", ".join(str(n) for n in nodes or [])


# --- plot helpers ------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    # Constrained layout: tight_layout warns when labels don't fit, and warnings are errors in tests.
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def _legend(ax: Axes, **kwargs: Any) -> None:
    # Axes.legend() warns when nothing is labelled (e.g. an empty run).
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _empty(ax: Axes, text: str) -> None:
    ax.text(
        0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=14, color="0.4"
    )


def _floats(values: Any, n: int | None = None) -> np.ndarray:
    """A per-second (or per-bin) list as floats, None as NaN, cut or padded to ``n``."""
    arr = np.array(
        [np.nan if v is None else v for v in (values if values is not None else [])], dtype=float
    )
    if n is None:
        return arr
    if len(arr) >= n:
        return arr[:n]
    return np.concatenate([arr, np.full(n - len(arr), np.nan)])


def _event_times(result: dict, key: str) -> list[float]:
    out = []
    for event in result.get(key) or []:
        at = event.get("at_ms")
        if at is not None:
            out.append(float(at) / 1000.0)
    return out


def _mark_events(ax: Axes, result: dict, label: bool, tags: bool = False) -> None:
    """Dashed red lines at failures and green at recoveries (legend entries once per axes)."""
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for key, colour, name, tag in (
        ("failures", FAILURE_COLOUR, "failure", "F"),
        ("recoveries", RECOVERY_COLOUR, "recovery", "R"),
    ):
        times = _event_times(result, key)
        for i, t in enumerate(times):
            ax.axvline(
                t,
                color=colour,
                linestyle="--",
                linewidth=1.2,
                label=name if label and i == 0 else None,
            )
            if tags and len(times) <= MAX_FAILOVER_PLOTS:
                ax.text(
                    t,
                    1.01,
                    f"{tag}{i}",
                    transform=trans,
                    color=colour,
                    fontsize=8,
                    ha="center",
                    va="bottom",
                )


# --- plots -------------------------------------------------------------------------------------


def plot_latency_cdf(result: dict) -> Figure:
    fig = _figure(10, 4.5)
    ax = fig.add_subplot()
    cdf = result.get("latency_cdf") or {}
    ms = _floats(cdf.get("ms"))
    share = _floats(cdf.get("share"), len(ms))
    ax.set_title("Latency of answers from the router (CDF)")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("share of answers")
    ax.set_ylim(0, 1.02)
    ax.grid(True, color="0.9")
    keep = np.isfinite(ms) & np.isfinite(share)
    ms, share = ms[keep], share[keep]
    if not len(ms):
        _empty(ax, "no answers")
        return fig
    positive = ms[ms > 0]
    log = len(positive) > 0 and positive.max() / positive.min() > 20
    if log:
        # A log axis cannot show 0 ms; those points are the same as the smallest positive one.
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # "1", not "10^0"
        ms, share = ms[ms > 0], share[ms > 0]
    ax.plot(ms, share, color="#1f4e79", linewidth=2, label="answers")
    for key, name, colour in (
        ("latency_ms_p50", "p50", "#e08a2c"),
        ("latency_ms_p99", "p99", FAILURE_COLOUR),
    ):
        value = result.get(key)
        if value is None or (log and value <= 0):
            continue
        ax.axvline(
            value,
            color=colour,
            linestyle="--",
            linewidth=1.3,
            label=f"{name} = {_fmt(float(value))} ms",
        )
        ax.text(value, 0.6, f"{name} ", rotation=90, color=colour, ha="right", va="bottom", fontsize=9,
                transform=blended_transform_factory(ax.transData, ax.transAxes),
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})  # fmt: skip
    _legend(ax, loc="lower right")
    return fig


def plot_qps_rcodes(result: dict) -> Figure:
    fig = _figure(11, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True)
    series = result.get("series") or {}
    t = _floats(series.get("t_s"))
    n = len(t)
    top.set_title("Queries per second", pad=14)
    top.set_ylabel("queries / s")
    bottom.set_title("Response codes per second")
    bottom.set_ylabel("answers / s")
    bottom.set_xlabel("time since start (s)")
    for ax in (top, bottom):
        ax.grid(True, color="0.9")
    if not n:
        _empty(top, "no data")
        _empty(bottom, "no data")
        return fig
    for key, name, colour, width in (
        ("client_queries", "client queries", "#1f4e79", 2.0),
        ("sent", "sent to the router", "#e08a2c", 3.0),
        ("answered", "answered", "#4c9f70", 1.5),
    ):
        if key in series:
            top.plot(t, _floats(series[key], n), color=colour, linewidth=width, label=name)
    rcodes = series.get("rcodes") or {}
    names = sorted(
        rcodes,
        key=lambda r: (
            list(RCODE_COLOURS).index(r) if r in RCODE_COLOURS else len(RCODE_COLOURS),
            r,
        ),
    )
    if names:
        extra = iter(colormaps["tab10"].colors)
        colours = [RCODE_COLOURS.get(r) or next(extra) for r in names]
        stack = [np.nan_to_num(_floats(rcodes[r], n)) for r in names]
        bottom.stackplot(t, *stack, labels=[_plain(r) for r in names], colors=colours, alpha=0.85)
    else:
        _empty(bottom, "no answers")
    top.set_ylim(bottom=0)
    bottom.set_ylim(bottom=0)
    top.set_xlim(t.min(), max(t.max(), t.min() + 1))
    _mark_events(top, result, label=True, tags=True)
    _mark_events(bottom, result, label=False)
    _legend(top, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    _legend(bottom, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="rcode")
    return fig


def plot_failover(failure: dict) -> Figure:
    fig = _figure(10, 4.5)
    ax = fig.add_subplot()
    series = failure.get("series") or {}
    t = _floats(series.get("t_ms"))
    answers = np.nan_to_num(_floats(series.get("answers"), len(t)))
    dead = np.nan_to_num(_floats(series.get("answers_to_dead"), len(t)))
    width = float(np.median(np.diff(t))) if len(t) > 1 else 100.0
    after = failure.get("answers_to_dead_after_bound")
    nodes = _nodes(failure.get("nodes"))
    title = f"{failure.get('label') or failure.get('command') or 'failure'}: {nodes or 'no nodes'}"
    title += "\n" + (
        f"{after:,} answers to dead after the bound"
        if after is not None
        else "answers to dead after the bound: unknown"
    )
    ax.set_title(_plain(title))
    ax.set_xlabel("time since the failure (ms)")
    ax.set_ylabel(f"answers per {width:g} ms")
    ax.grid(True, axis="y", color="0.9")
    ax.set_axisbelow(True)
    if len(t):
        ax.bar(t, answers, width=width, align="edge", color="0.75", label="answers")
        ax.bar(
            t,
            dead,
            width=width,
            align="edge",
            color=FAILURE_COLOUR,
            label="answers naming a failed node",
        )
    else:
        _empty(ax, "no answers around the failure")
    bound = failure.get("bound_ms")
    if bound is not None:
        ax.axvspan(
            0,
            bound,
            color="#f5c26b",
            alpha=0.25,
            zorder=0,
            label=f"bound ({_fmt(float(bound))} ms)",
        )
        ax.axvline(bound, color="#b26a00", linestyle=":", linewidth=1.5)
    ax.axvline(
        0, color="black", linewidth=1.5, label=_plain(f"failure: {failure.get('command', '')}")
    )
    zero = failure.get("time_to_zero_dead_answers_ms")
    if zero is not None and zero > 0:
        ax.axvline(
            zero,
            color=RECOVERY_COLOUR,
            linestyle="--",
            linewidth=1.2,
            label=f"last answer to dead ({_fmt(float(zero))} ms)",
        )
    ax.set_ylim(bottom=0)
    _legend(ax, loc="upper right", fontsize=9)
    return fig


def plot_node_load(result: dict) -> Figure:
    load = result.get("node_load") or {}
    nodes = list(load.get("nodes") or [])
    capacity = list(load.get("capacity_gbps") or [])
    rows = len(nodes)
    height = min(14.0, max(3.0, 0.32 * rows + 1.8))
    fig = _figure(11, height)
    ax = fig.add_subplot()
    ax.set_title("Load on each node against its capacity", pad=14)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("node (capacity)")
    util = [_floats(r) for r in (load.get("utilization") or [])][:rows]
    cols = max((len(r) for r in util), default=0)
    t = _floats(load.get("t_s"))
    if not rows or not cols:
        _empty(ax, "no load data")
        return fig
    grid = np.vstack(
        [_floats(r, cols) for r in util] + [np.full(cols, np.nan)] * (rows - len(util))
    )
    grid = np.clip(grid, 0.0, 1.2)
    start = float(t[0]) if len(t) else 0.0
    x = start + np.arange(cols + 1, dtype=float)  # second s covers [s, s + 1)
    y = np.arange(rows + 1, dtype=float)
    # Sequential up to capacity, then red: an overloaded second must not look like a busy one.
    cmap = colormaps["Blues"].with_extremes(over="#d50000", bad="#eeeeee")
    mesh = ax.pcolormesh(
        x, y, np.ma.masked_invalid(grid), cmap=cmap, norm=Normalize(0.0, 1.0), shading="flat"
    )
    cbar = fig.colorbar(mesh, ax=ax, extend="max", pad=0.01)
    cbar.set_label("load / capacity")
    high = load.get("high_water")
    if high is not None:
        cbar.ax.axhline(float(high), color="#e08a2c", linewidth=2)
        cbar.ax.text(1.05, float(high), " high water", transform=blended_transform_factory(cbar.ax.transAxes, cbar.ax.transData),
                     va="center", fontsize=8, color="#b26a00")  # fmt: skip
    labels = []
    for i, node in enumerate(nodes):
        cap = capacity[i] if i < len(capacity) else None
        labels.append(_plain(f"{node} ({_fmt(cap)} Gbps)" if cap is not None else str(node)))
    ax.set_yticks(
        np.arange(rows) + 0.5, labels, fontsize=9 if rows <= 30 else max(4, 9 - (rows - 30) // 10)
    )
    ax.invert_yaxis()
    ax.set_xlim(x[0], x[-1])
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for i, at in enumerate(_event_times(result, "failures")):
        ax.axvline(at, color="black", linestyle="--", linewidth=1.2)
        if len(result.get("failures") or []) <= MAX_FAILOVER_PLOTS:
            ax.text(at, 1.01, f"F{i}", transform=trans, fontsize=8, ha="center", va="bottom")
    return fig


def plot_client_map(result: dict) -> Figure:
    fig = _figure(11, 7)
    ax = fig.add_subplot()
    ax.set_title("Clients to nodes")
    ax.set_xlabel("longitude (deg)")
    ax.set_ylabel("latitude (deg)")
    clients = [
        c
        for c in result.get("client_map") or []
        if c.get("lat") is not None and c.get("lon") is not None
    ]
    locations = [
        n
        for n in result.get("node_locations") or []
        if n.get("lat") is not None and n.get("lon") is not None
    ]
    order = [str(n["node"]) for n in locations]
    order += sorted({str(c.get("node")) for c in clients} - set(order))
    if not order and not clients:
        _empty(ax, "no locations")
        return fig
    palette = colormaps["tab10" if len(order) <= 10 else "tab20"]
    colour = {node: palette(i % palette.N) for i, node in enumerate(order)}
    where = {str(n["node"]): (float(n["lon"]), float(n["lat"])) for n in locations}
    lons = [float(c["lon"]) for c in clients] + [p[0] for p in where.values()]
    lats = [float(c["lat"]) for c in clients] + [p[1] for p in where.values()]
    if clients:
        segments = [
            ((float(c["lon"]), float(c["lat"])), where[str(c.get("node"))])
            for c in clients
            if str(c.get("node")) in where
        ]
        seg_colours = [colour[str(c.get("node"))] for c in clients if str(c.get("node")) in where]
        ax.add_collection(
            LineCollection(segments, colors=seg_colours, linewidths=0.8, alpha=0.25, zorder=1)
        )
        queries = np.array([max(0.0, float(c.get("queries") or 0)) for c in clients])
        top = math.sqrt(queries.max()) if queries.max() > 0 else 1.0
        sizes = 12 + 288 * np.sqrt(queries) / top
        ax.scatter([float(c["lon"]) for c in clients], [float(c["lat"]) for c in clients], s=sizes,
                   c=[colour[str(c.get("node"))] for c in clients], alpha=0.7, edgecolors="white", linewidths=0.5,
                   zorder=2, label="client group (area ~ sqrt(queries))")  # fmt: skip
    if where:
        ax.scatter([p[0] for p in where.values()], [p[1] for p in where.values()], marker="^", s=240,
                   c=[colour[node] for node in where], edgecolors="black", linewidths=1.2, zorder=3, label="node")  # fmt: skip
        for node, (lon, lat) in where.items():
            ax.annotate(_plain(node), (lon, lat), xytext=(7, 7), textcoords="offset points", fontsize=9, fontweight="bold",
                        zorder=4, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})  # fmt: skip
    else:
        _empty(ax, "no node locations")
    lon_lo, lon_hi = min(lons), max(lons)
    lat_lo, lat_hi = min(lats), max(lats)
    lon_pad = max(1.0, 0.08 * (lon_hi - lon_lo))
    lat_pad = max(1.0, 0.08 * (lat_hi - lat_lo))
    ax.set_xlim(max(-180.0, lon_lo - lon_pad), min(180.0, lon_hi + lon_pad))
    ax.set_ylim(max(-90.0, lat_lo - lat_pad), min(90.0, lat_hi + lat_pad))
    # One degree of longitude is cos(latitude) as long as one of latitude.
    ax.set_aspect(1.0 / max(0.1, math.cos(math.radians((lat_lo + lat_hi) / 2))), adjustable="box")
    ax.grid(True, color="0.9")
    _legend(ax, loc="best", fontsize=9, markerscale=0.6)
    return fig


# --- page --------------------------------------------------------------------------------------


def _figure_html(name: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="plot-{_esc(name)}">\n<img class="plot" data-plot="{_esc(name)}" alt="{_esc(caption)}" '
            f'src="data:image/png;base64,{data}">\n<figcaption>{_esc(caption)}</figcaption>\n</figure>')  # fmt: skip


def _summary(result: dict) -> str:
    rows = []
    for key, meaning in SUMMARY_FIELDS:
        value = result.get(key)
        if key == "router" and isinstance(value, dict):
            value = value.get("dns")
        rows.append(f"<tr><th>{_esc(key)}</th>{_cell(value)}<td>{_esc(meaning)}</td></tr>")
    return _table(("figure", "value", "meaning"), rows)


def _failures_table(failures: list[dict]) -> str:
    rows = []
    for i, f in enumerate(failures):
        zero = f.get("time_to_zero_dead_answers_ms")
        flaps = f.get("flaps_seen_by_clients") or {}
        at = f.get("at_ms")
        label = _esc(f.get("label") or f.get("command") or "")
        if i < MAX_FAILOVER_PLOTS:
            label = f'<a href="#plot-failover-{i}">{label}</a>'
        rows.append(
            f'<tr><td class="num">{i}</td><td>{label}</td><td>{_esc(_nodes(f.get("nodes")))}</td>'
            + _cell(None if at is None else float(at) / 1000.0)
            + _cell(f.get("bound_ms"))
            + _cell(f.get("answers_to_dead"))
            + _cell(f.get("answers_to_dead_after_bound"))
            + (_cell(zero) if zero is not None else "<td>never</td>")
            + _cell(f.get("clients_sent_to_dead"))
            + f"<td>{_esc(', '.join(f'{n}: {_fmt(v)}' for n, v in flaps.items()) or MISSING)}</td></tr>"
        )
    return _table(("#", "label", "nodes", "at (s)", "bound (ms)", "answers to dead", "after bound",
                   "time to zero (ms)", "clients sent to dead", "flaps seen"), rows)  # fmt: skip


def _recoveries_table(recoveries: list[dict]) -> str:
    rows = []
    for r in recoveries:
        back = r.get("time_to_back_in_answers_ms") or {}
        text = ", ".join(
            f"{n}: {_fmt(v)} ms" if v is not None else f"{n}: not back by the end"
            for n, v in back.items()
        )
        at = r.get("at_ms")
        rows.append(f"<tr><td>{_esc(r.get('label') or r.get('command') or '')}</td><td>{_esc(_nodes(r.get('nodes')))}</td>"
                    + _cell(None if at is None else float(at) / 1000.0)
                    + f"<td>{_esc(text or MISSING)}</td></tr>")  # fmt: skip
    return _table(("label", "nodes", "at (s)", "time to back in answers"), rows)


def _checks_table(checks: list[dict]) -> str:
    rows = []
    for c in checks:
        ok = bool(c.get("ok"))
        rows.append(f"<tr><td>{_esc(c.get('check', ''))}</td>{_cell(c.get('expected'), num=False)}{_cell(c.get('actual'))}"
                    f"<td class=\"{'ok' if ok else 'fail'}\">{'ok' if ok else 'FAIL'}</td></tr>")  # fmt: skip
    return _table(("check", "expected", "actual", "result"), rows)


def render(result: dict, out_dir: Path) -> Path:
    """Write out_dir/report.html for a result; return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scenario = result.get("scenario") or "unnamed"
    failures = list(result.get("failures") or [])
    recoveries = list(result.get("recoveries") or [])
    checks = list(result.get("checks") or [])

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>Load test: {_esc(scenario)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>Load test: {_esc(scenario)}</h1>",
    ]
    if result.get("description"):
        parts.append(f'<p class="description">{_esc(result["description"])}</p>')
    if result.get("passed") is not None:
        passed = bool(result["passed"])
        parts.append(
            f'<p class="banner {"passed" if passed else "failed"}">{"PASSED" if passed else "FAILED"}</p>'
        )
    if checks:
        parts += ["<h2>Checks</h2>", _checks_table(checks)]
    parts += ["<h2>Summary</h2>", _summary(result)]
    if failures:
        parts += ["<h2>Failures</h2>", _failures_table(failures)]
    if recoveries:
        parts += ["<h2>Recoveries</h2>", _recoveries_table(recoveries)]

    parts.append("<h2>Latency</h2>")
    parts.append(_figure_html("latency-cdf", _render(plot_latency_cdf, result),
                              "Share of answers from the router that came back within a given latency, with p50 and p99 marked."))  # fmt: skip
    parts.append("<h2>Traffic over time</h2>")
    parts.append(_figure_html("qps-rcodes", _render(plot_qps_rcodes, result),
                              "Queries per second (top) and response codes per second (bottom); "
                              "dashed red lines are failures (F0, F1, ...) and dashed green lines recoveries (R0, R1, ...)."))  # fmt: skip
    if failures:
        parts.append("<h2>Failovers</h2>")
        for i, failure in enumerate(failures[:MAX_FAILOVER_PLOTS]):
            parts.append(_figure_html(f"failover-{i}", _render(plot_failover, failure),
                                      f"Failure {i} ({failure.get('label') or failure.get('command') or ''}): answers per bin around "
                                      "the failure (grey) and those still naming a failed node (red), against the detection bound."))  # fmt: skip
        if len(failures) > MAX_FAILOVER_PLOTS:
            more = len(failures) - MAX_FAILOVER_PLOTS
            parts.append(f'<p class="note">{more} more failure{"s" if more != 1 else ""} not drawn; '
                         "their figures are in the failures table above.</p>")  # fmt: skip
    parts.append("<h2>Node load</h2>")
    parts.append(_figure_html("node-load", _render(plot_node_load, result),
                              "Each node's load divided by its capacity, per second: darker is busier, red is over capacity, "
                              "dashed lines are failures."))  # fmt: skip
    parts.append("<h2>Where clients went</h2>")
    parts.append(_figure_html("client-map", _render(plot_client_map, result),
                              "Client groups by location (area grows with their queries), coloured by the node they were "
                              "mostly sent to, with the nodes as labelled triangles."))  # fmt: skip
    parts += [f"<script>{SCRIPT}</script>", "</body>", "</html>", ""]

    path = out_dir / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _render(plot: Callable[[dict], Figure], data: dict) -> bytes:
    return _png(plot(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("result", type=Path, help="result.json of a load test")
    parser.add_argument(
        "-o", "--out-dir", type=Path, help="where to write report.html (default: beside the result)"
    )
    args = parser.parse_args(argv)
    result = json.loads(args.result.read_text(encoding="utf-8"))
    path = render(result, args.out_dir or args.result.parent)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
