"""loadtest/report.py: a result dict becomes one self-contained report.html whose plots a browser shows.

The result is made here (a small run: 20 s, 3 nodes, 2 failures, 1 recovery), so the test checks
the report against the result.json schema, not against a run. The browser test opens the file in
headless Chromium and reads back what the page's own script counted: plots decoded by the browser.
"""

from __future__ import annotations

import base64
import math
import random
import re
from pathlib import Path

import pytest

from loadtest.report import PLOTS, render
from tests.chromium import chromium_binary, dump_dom, screenshot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPECTED_PLOTS = (
    "latency-cdf",
    "qps-rcodes",
    "failover-0",
    "failover-1",
    "node-load",
    "client-map",
)
NODES = (
    ("fra1", 50.1, 8.7, 3320, 40.0),
    ("ams1", 52.4, 4.9, 1136, 20.0),
    ("vie1", 48.2, 16.4, 8447, 10.0),
)


def make_result(seconds: int = 20, seed: int = 7) -> dict:
    """A result.json-shaped dict of a short run: fra1 fails at 6 s and is back at 14 s, ams1 fails at 10 s."""
    rng = random.Random(seed)
    t_s = list(range(seconds))
    client = [rng.randint(950, 1050) for _ in t_s]
    sent = [int(c * 0.6) for c in client]
    timeouts = [rng.randint(0, 3) if 6 <= s <= 8 else 0 for s in t_s]
    answered = [s - to for s, to in zip(sent, timeouts)]
    nxdomain = [int(a * 0.05) for a in answered]
    refused = [1 if s % 7 == 0 else 0 for s in t_s]
    noerror = [a - n - r for a, n, r in zip(answered, nxdomain, refused)]

    def failure(
        label: str,
        command: str,
        at_ms: float,
        node: str,
        dead: list[int],
        after: int,
        zero: float | None,
    ) -> dict:
        bins = list(range(-1000, 5000, 100))
        answers = [rng.randint(50, 70) for _ in bins]
        dead_bins = [0] * 10 + dead + [0] * (len(bins) - 10 - len(dead))
        return {
            "label": label, "command": command, "failure": 0, "repeat": 0, "at_ms": at_ms, "nodes": [node],
            "bound_ms": 3500.0, "window_ms": 8000.0, "answers_to_dead": sum(dead), "answers_to_dead_after_bound": after,
            "time_to_zero_dead_answers_ms": zero, "clients_sent_to_dead": sum(dead) * 2, "clients_sent_to_dead_after_bound": 0,
            "clients_time_to_zero_dead_ms": zero or 0.0, "flaps_seen_by_clients": {node: 0},
            "series": {"t_ms": bins, "answers": answers, "answers_to_dead": dead_bins},
        }  # fmt: skip

    failures = [
        failure(
            "power off fra1", "power-off fra1", 6000.0, "fra1", [20, 18, 15, 9, 4, 1], 0, 540.0
        ),
        failure(
            "silent ams1", "blackhole ams1", 10000.0, "ams1", [25] * 30 + [3] * 10 + [1], 12, None
        ),
    ]
    recoveries = [{"label": "power on fra1", "command": "power-on fra1", "failure": 0, "repeat": 0, "at_ms": 14000.0,
                   "nodes": ["fra1"], "time_to_back_in_answers_ms": {"fra1": 11250.0}}]  # fmt: skip

    # Survivors take the failed nodes' load: vie1, the smallest, goes over capacity after 10 s.
    util = []
    for i, base in enumerate((0.5, 0.55, 0.45)):
        row = []
        for s in t_s:
            down = (i == 0 and 6 <= s < 14) or (i == 1 and s >= 10)
            extra = 0.25 * (6 <= s < 14) + 0.4 * (s >= 10) * (i + 1) / 2
            row.append(0.0 if down else round(base + extra + rng.uniform(-0.05, 0.05), 4))
        util.append(row)

    client_map = []
    for g in range(10):
        node = NODES[g % 3]
        client_map.append({"group": g + 1, "lat": node[1] + rng.uniform(-4, 4), "lon": node[2] + rng.uniform(-6, 6),
                           "asn": 64500 + g, "node": node[0], "queries": rng.randint(10, 5000)})  # fmt: skip

    ms = sorted(rng.lognormvariate(math.log(2.0), 0.8) for _ in range(201))
    return {
        "scenario": "two-failures",
        "description": "Power off fra1, then silence ams1 <script>alert('x')</script> & check failover.",
        "router": {"dns": "127.0.0.1:5353", "api": "127.0.0.1:8053"},
        "duration_s": float(seconds),
        "qps": round(sum(answered) / seconds, 1),
        "latency_ms_p50": round(ms[100], 3),
        "latency_ms_p99": round(ms[198], 3),
        "best_node_share": 0.9731,
        "client_best_node_share": 0.8812,
        "overloaded_node_seconds": float(sum(v > 1.0 for row in util for v in row)),
        "timeout_share": round(sum(timeouts) / sum(sent), 5),
        "cache_hit_share": 0.4,
        "ecs_share": None,
        "client_queries": sum(client),
        "wire_queries": sum(sent),
        "failures": failures,
        "recoveries": recoveries,
        "series": {
            "t_s": t_s,
            "client_queries": client,
            "sent": sent,
            "answered": answered,
            "timeouts": timeouts,
            "rcodes": {
                "NOERROR": noerror,
                "NXDOMAIN": nxdomain,
                "REFUSED": refused,
                "timeout": timeouts,
            },
        },  # fmt: skip
        "latency_cdf": {"share": [i / 200 for i in range(201)], "ms": [round(v, 3) for v in ms]},
        "node_load": {
            "nodes": [n[0] for n in NODES],
            "capacity_gbps": [n[4] for n in NODES],
            "t_s": t_s,
            "utilization": util,
            "high_water": 0.9,
        },  # fmt: skip
        "client_map": client_map,
        "node_locations": [{"node": n[0], "lat": n[1], "lon": n[2], "asn": n[3]} for n in NODES],
        "checks": [
            {"check": "answers_to_dead_after_bound", "expected": "<= 0", "actual": 12, "ok": False},
            {"check": "timeout_share", "expected": "<= 0.01", "actual": 0.0004, "ok": True},
        ],
        "passed": False,
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(make_result(), tmp_path_factory.mktemp("report"))


def plot_images(page: str) -> dict[str, bytes]:
    found = re.findall(
        r'<img class="plot" data-plot="([^"]+)"[^>]*src="data:image/png;base64,([^"]+)"', page
    )
    return {name: base64.b64decode(data, validate=True) for name, data in found}


def test_report_has_every_plot_as_an_embedded_png(report: Path) -> None:
    assert report.is_file() and report.name == "report.html"
    page = report.read_text(encoding="utf-8")
    assert sorted(re.findall(r'data-plot="([^"]+)"', page)) == sorted(EXPECTED_PLOTS)
    assert set(PLOTS) <= set(EXPECTED_PLOTS)
    images = plot_images(page)
    assert sorted(images) == sorted(EXPECTED_PLOTS)
    for name, png in images.items():
        assert png.startswith(PNG_SIGNATURE), name
        assert len(png) > 5000, f"{name}: only {len(png)} bytes"
    assert page.count("<figcaption>") == len(EXPECTED_PLOTS)
    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_report_escapes_strings_and_shows_the_tables(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    assert "<script>alert(" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; check failover." in page
    assert "Load test: two-failures" in page
    assert "127.0.0.1:5353" in page
    assert "FAILED" in page and "PASSED" not in page
    assert ">never<" in page  # ams1's dead answers never reached zero
    assert "fra1: 11,250 ms" in page
    assert "answers_to_dead_after_bound" in page
    assert "ecs_share" in page and "<td>\u2013</td>" in page


def test_report_without_optional_parts(tmp_path: Path) -> None:
    result = make_result()
    for key in ("scenario", "description", "checks", "passed", "router", "duration_s"):
        del result[key]
    result["failures"] = []
    result["recoveries"] = []
    result["client_map"] = []
    result["latency_cdf"] = {"share": [], "ms": []}
    result["latency_ms_p50"] = result["latency_ms_p99"] = None
    page = render(result, tmp_path / "out").read_text(encoding="utf-8")
    assert sorted(plot_images(page)) == sorted(PLOTS)
    assert "PASSED" not in page and "FAILED" not in page


def test_many_failures_draw_the_first_twelve(tmp_path: Path) -> None:
    result = make_result()
    result["failures"] = [
        dict(result["failures"][i % 2], at_ms=1000.0 * (i + 1)) for i in range(14)
    ]
    page = render(result, tmp_path).read_text(encoding="utf-8")
    assert sum(name.startswith("failover-") for name in plot_images(page)) == 12
    assert "2 more failures not drawn" in page


@pytest.mark.skipif(
    chromium_binary() is None, reason="no chromium, chromium-browser or google-chrome on PATH"
)
def test_report_opens_in_chromium_with_every_plot_loaded(report: Path, tmp_path: Path) -> None:
    dom = dump_dom(report, timeout_s=60, user_data_dir=tmp_path / "profile-dom")
    loaded = re.search(r'data-plots-loaded="(\d+)"', dom)
    total = re.search(r'data-plots-total="(\d+)"', dom)
    assert loaded and total, "the page's load script did not run:\n" + dom[:2000]
    assert int(loaded.group(1)) == int(total.group(1)) == len(EXPECTED_PLOTS)
    shot = screenshot(report, tmp_path / "report.png", user_data_dir=tmp_path / "profile-shot")
    data = shot.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 20_000, f"screenshot only {len(data)} bytes"
