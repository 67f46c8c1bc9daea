"""Load-test scenarios: every shipped file validates, and a short version of each runs
against the real router (started by `loadtest run` itself) and shows its outcome."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.play import parse_reply
from loadtest.scenario import SCENARIO_DIR, load_scenario, scaled
from router.config.problems import ConfigError
from tests.chromium import chromium_binary, dump_dom
from tests.conftest import REPO

SCENARIOS = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
# Seconds each scenario is played in the suite: long enough for what it checks (the silence
# bound is 3.5 s; a restored node returns after a 10 s hold-down and 3 good reports).
SHORT = {
    "steady": 5, "ramp": 6, "flash-crowd": 8, "diurnal": 8, "node-power-loss": 8, "uplink-failure": 8,
    "isp-blackout": 12, "flapping-node": 14, "node-overload": 10, "recovery": 26,
}  # fmt: skip


def test_every_shipped_scenario_has_a_short_version() -> None:
    assert set(SCENARIOS) == set(SHORT)
    assert {"steady", "ramp", "flash-crowd", "diurnal"} <= set(SCENARIOS)  # the four shapes


@pytest.mark.parametrize("name", SCENARIOS)
def test_shipped_scenario_validates_against_the_sample(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.cli", "check", name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"{name}.yaml: ok" in result.stdout


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


BASE = f"name: t\ndescription: d\ndeployment: {REPO / 'zones'}\nduration_s: 10\nmax_queries: 100\n"


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("traffic: {shape: steady, qps: 10, peak_qps: 20}\n", 6, "a steady shape has one rate"),
        (
            "traffic:\n  shape: flash\n  qps: 10\n  peak_qps: 100\n",
            6,
            'flash_at_s: required for shape "flash"',
        ),
        ("traffic: {shape: sawtooth, qps: 10}\n", 6, "sawtooth"),
        (
            "traffic: {shape: steady, qps: 10}\nnames: {steered: 0.5, static: 0.2, nxdomain: 0.2}\n",
            7,
            "must add up to 1",
        ),
        (
            "traffic: {shape: steady, qps: 10}\nfailures:\n  - at_s: 12\n    do: power tef-mad-1 off\n",
            8,
            "not before the end of the run",
        ),
        (
            "traffic: {shape: steady, qps: 10}\nfailures:\n  - at_s: 2\n    do: power nosuch off\n",
            9,
            "'nosuch' matches no node",
        ),
        (
            "traffic: {shape: steady, qps: 10}\nfailures:\n  - at_s: 2\n    do: explode tef-mad-1\n",
            9,
            "cannot parse 'explode tef-mad-1'",
        ),
        (
            "traffic: {shape: steady, qps: 10}\nresolvers:\n  isps: {64999: 1}\n",
            8,
            "AS64999 is not in the deployment's client map",
        ),
        ("traffic: {shape: steady, qps: 10}\nwhat: 1\n", 7, 'unknown field "what"'),
    ],
)
def test_bad_scenario_is_reported_with_file_and_line(
    tmp_path: Path, body: str, line: int, message: str
) -> None:
    from router.config.deployment import load_deployment

    path = _write(tmp_path, BASE + body)
    with pytest.raises(ConfigError) as caught:
        load_scenario(path, load_deployment(REPO / "zones"))
    text = str(caught.value)
    assert f"{path}:{line}:" in text and message in text, text


def test_check_command_reports_problems_and_exits_1(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        BASE
        + "traffic: {shape: steady, qps: 10}\nfailures:\n  - at_s: 2\n    do: power nosuch off\n",
    )
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.cli", "check", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert f"{path}:9: failures.0.do: selector 'nosuch' matches no node" in result.stderr


def test_scaling_a_scenario_scales_its_timeline_not_its_bounds() -> None:
    scenario = load_scenario(SCENARIO_DIR / "flapping-node.yaml")
    short, k = scaled(scenario, scenario.duration_s / 3)
    assert k == pytest.approx(1 / 3)
    assert short.failures[0].at_s == pytest.approx(scenario.failures[0].at_s / 3)
    assert short.failures[0].repeat_every_s == pytest.approx(
        scenario.failures[0].repeat_every_s / 3
    )
    assert short.failures[0].bound_ms == scenario.failures[0].bound_ms


def test_reply_parser_reads_nodes_ttl_and_scope() -> None:
    import dns.edns
    import dns.message
    import dns.name
    import dns.rrset

    query = dns.message.make_query(
        "www.cdn.example.", "A", use_edns=0, options=[dns.edns.ECSOption("83.44.10.0", 24)]
    )
    reply = dns.message.make_response(query)
    reply.answer.append(
        dns.rrset.from_text("www.cdn.example.", 30, "IN", "A", "192.0.2.11", "192.0.2.12")
    )
    reply.use_edns(0, options=[dns.edns.ECSOption("83.44.10.0", 24, 20)])
    wire = reply.to_wire()
    question = len(dns.name.from_text("www.cdn.example.").to_wire()) + 4
    node_of = {bytes([192, 0, 2, 11]): 0, bytes([192, 0, 2, 12]): 1}
    rcode, n1, n2, ttl, scope, truncated = parse_reply(wire, question, node_of)
    assert (rcode, {n1, n2}, ttl, scope, truncated) == (0, {0, 1}, 30, 20, False)
    negative = dns.message.make_response(query)
    negative.set_rcode(3)
    negative.authority.append(
        dns.rrset.from_text(
            "cdn.example.", 3600, "IN", "SOA", "ns1.cdn.example. h.cdn.example. 1 2 3 4 300"
        )
    )
    assert parse_reply(negative.to_wire(), question, node_of)[:4] == (3, -1, -1, 300)


def _run(name: str, out: Path, progress: bool = False) -> tuple[subprocess.CompletedProcess, dict]:
    args = [
        sys.executable,
        "-m",
        "loadtest.cli",
        "run",
        name,
        "--duration",
        str(SHORT[name]),
        "--out",
        str(out),
    ]
    args += [] if progress else ["--no-progress"]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert (out / "result.json").exists(), result.stderr
    return result, json.loads((out / "result.json").read_text())


CONTRACT = ("qps", "latency_ms_p50", "latency_ms_p99", "best_node_share", "overloaded_node_seconds")


@pytest.mark.integration
@pytest.mark.parametrize("name", SCENARIOS)
def test_short_scenario_against_the_real_router(name: str, tmp_path: Path) -> None:
    run, result = _run(name, tmp_path / name)
    scenario = load_scenario(SCENARIO_DIR / f"{name}.yaml")
    for key in CONTRACT:
        assert key in result, key
    assert (tmp_path / name / "report.html").stat().st_size > 10_000
    # Real traffic went both ways, and most of it was sent (not all cached or dropped).
    assert result["answered"] > 0.9 * result["wire_queries"] > 0, result["generator"]
    assert result["qps"] > 100
    assert 0 < result["latency_ms_p50"] <= result["latency_ms_p99"] < 100, (
        result["series"]["latency_ms_p99"],
        result["generator"],
    )
    assert result["generator"]["unmatched_replies"] == 0
    # A best node first is a best node in the answer: the first share can only be the smaller.
    for first, in_answer in (
        ("best_node_share", "best_node_in_answer_share"),
        ("client_best_node_share", "client_best_node_in_answer_share"),
        ("best_node_share_ecs", "best_node_in_answer_share_ecs"),
    ):
        if result[first] is not None:
            assert 0 <= result[first] <= result[in_answer] <= 1, (
                first,
                result[first],
                result[in_answer],
            )
    # The scenario's own expectations, checked by loadtest itself: every one held.
    assert result["checks"] and len(result["checks"]) >= sum(
        v is not None for v in scenario.expect.model_dump().values()
    )
    failed = [c for c in result["checks"] if not c["ok"]]
    assert not failed, f"{failed}\n{run.stdout}\n{run.stderr[-2000:]}"
    assert run.returncode == 0
    if scenario.failures:
        assert all(
            key in f
            for f in result["failures"]
            for key in ("answers_to_dead_after_bound", "time_to_zero_dead_answers_ms")
        )
        first = result["failures"][0]
        assert first["answers_naming_them_before"] > 0  # the failure hit a node clients were using
        assert all(f["answers_to_dead_after_bound"] == 0 for f in result["failures"])
        assert (
            first["time_to_zero_dead_answers_ms"] is not None
            and first["time_to_zero_dead_answers_ms"] <= first["bound_ms"]
        )
    if name == "flash-crowd":
        series = result["series"]["client_queries"]
        assert max(series) > 5 * min(
            series[1:-1]
        )  # the crowd arrived: 10x offered, at least 5x seen
    if name == "flapping-node":
        assert len(result["failures"]) >= 3  # it flapped; clients saw at most one return
        assert max(v for f in result["failures"] for v in f["flaps_seen_by_clients"].values()) <= 1
    if name == "recovery":
        back = [v for r in result["recoveries"] for v in r["time_to_back_in_answers_ms"].values()]
        assert back and all(v is not None for v in back)
        assert min(back) >= 1_500  # never at once: 3 good reports in a row first (hysteresis)


@pytest.mark.integration
def test_report_of_a_real_run_opens_in_chromium(tmp_path: Path) -> None:
    if chromium_binary() is None:
        pytest.skip(
            "no Chromium on this machine (script/bootstrap --test installs Debian's chromium)"
        )
    run, result = _run("node-power-loss", tmp_path / "run", progress=True)
    assert (
        "answered" in run.stderr and "timeouts" in run.stderr
    )  # the progress display's last state
    dom = dump_dom(tmp_path / "run" / "report.html", user_data_dir=tmp_path / "profile")
    plots = 4 + len(result["failures"])
    assert f'data-plots-loaded="{plots}"' in dom and f'data-plots-total="{plots}"' in dom
    assert "node-power-loss" in dom and "nos-opo-1" in dom
