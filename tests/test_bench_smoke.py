"""Every benchmark in its ``--smoke`` mode, run the way its command line runs it.

``python loadtest/bench_X.py --smoke --json FILE`` must exit 0 and write every contract key,
with a number (or a boolean) where there should be one: a change that breaks a benchmark
fails here, not months later on someone's machine. The runs are the real ones, just small:
the real router as a subprocess, and the peers the benchmark measures (dnsperf, gdnsd,
PowerDNS, BIRD), which the benchmarks install with apt-get themselves when run as root. A
peer that cannot be had must be reported in the figures (a ``*_note``); the test then skips,
saying why, only when it truly cannot be had here (not root, or no apt-get).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.bench_failover import CONTRACT_KEYS as FAILOVER_KEYS
from loadtest.bench_failover import PEER_KEYS as FAILOVER_PEER_KEYS
from loadtest.packages import can_install
from loadtest.throughput.figures import CONTRACT_KEYS as THROUGHPUT_KEYS
from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[1]
# Smoke runs take seconds to a minute; the first one on a fresh machine also installs the peers.
RUN_TIMEOUT_S = 600

pytestmark = [pytest.mark.integration, pytest.mark.timeout(RUN_TIMEOUT_S + 60)]


def smoke(script: str, tmp_path: Path) -> dict:
    """Run ``loadtest/SCRIPT --smoke --json FILE`` as a subprocess; its figures."""
    out = tmp_path / f"{Path(script).stem}.json"
    done = subprocess.run([sys.executable, str(REPO / "loadtest" / script), "--smoke", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)  # fmt: skip
    assert done.returncode == 0, (
        f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return json.loads(out.read_text())


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_bench_core_smoke(tmp_path: Path) -> None:
    """On the repo's sample (zones/): ../shared/data is not needed."""
    contract = load_script(REPO / "loadtest" / "bench_core.py").CONTRACT_KEYS
    figures = smoke("bench_core.py", tmp_path)
    for key in contract:
        assert is_number(figures.get(key)), (key, figures.get(key))
    assert figures["smoke"] is True and figures["zones"] == str(REPO / "zones")
    assert figures["nodes"] == 18
    # The sample is sized so its demand fits (on-net limits included): no overrun, and the
    # count is the real one (the same as nodes_over_capacity).
    assert figures["demand_over_capacity"] == 0 and figures["capacity_overruns"] == 0
    assert figures["capacity_overruns"] == figures["nodes_over_capacity"]
    for entry in figures["targets"].values():
        assert isinstance(entry["pass"], bool)


def test_bench_throughput_smoke(tmp_path: Path) -> None:
    if not shutil.which("dnsperf") and not can_install():
        pytest.skip(
            "dnsperf is not installed and cannot be (not root with apt-get): bench_throughput cannot run"
        )
    figures = smoke("bench_throughput.py", tmp_path)
    assert "--smoke" in figures["command"]
    for key in THROUGHPUT_KEYS:
        assert key in figures, key
    for key in (
        "router_qps",
        "router_cpu_us_per_query",
        "p99_half_load_ms",
        "router2_qps",
        "overload_qps",
    ):
        assert is_number(figures[key]), (key, figures[key])
    assert isinstance(figures["wrong_answers"], int) and figures["wrong_answers"] == 0, figures[
        "wrong_answer_examples"
    ]
    assert figures["answers_checked"] > 0 and figures["overload_router_alive"] is True
    assert all(n == 0 for n in figures["router_log_problems"].values()), figures.get(
        "router_log_problem_lines"
    )
    missing = []
    for peer, keys in (("gdnsd", ("gdnsd_qps", "gdnsd_cpu_us_per_query", "qps_vs_gdnsd", "cpu_vs_gdnsd")),
                       ("pdns", ("pdns_qps", "qps_vs_pdns"))):  # fmt: skip
        if figures[f"{peer}_qps"] is None:
            note = figures.get(f"{peer}_note")
            assert note, f"{peer} not measured and no {peer}_note says why"
            assert not can_install(), f"{peer} could be installed here but was not measured: {note}"
            missing.append(f"{peer}: {note}")
            continue
        for key in keys:
            assert is_number(figures[key]), (key, figures[key])
        assert figures[f"{peer}_wrong_answers"] == 0, figures[f"{peer}_wrong_answer_examples"]
    for entry in figures["targets"].values():
        assert entry["pass"] in (True, False, None)
    if missing:
        pytest.skip("peers that cannot be had here (not root with apt-get): " + "; ".join(missing))


def test_bench_failover_smoke(tmp_path: Path) -> None:
    """The footprint reuses the sample's policies: it must name only nodes the footprint has."""
    figures = smoke("bench_failover.py", tmp_path)
    assert "--smoke" in figures["command"]
    for key in FAILOVER_KEYS:
        if key == "bird_withdraw_seen":
            continue
        assert is_number(figures.get(key)), (key, figures.get(key))
    assert (
        figures["explicit_trials"] >= 1
        and figures["silent_trials"] >= 1
        and figures["footprint_nodes"] > 18
    )
    if figures["bird_withdraw_seen"] is not True:
        assert figures["bird_withdraw_seen"] is False and figures.get("bird_note"), figures
        assert not can_install(), f"BIRD lab could be had here, yet: {figures['bird_note']}"
    for key in FAILOVER_PEER_KEYS:
        assert key in figures, key
    assert isinstance(figures["gdnsd_note"], str) and figures["gdnsd_note"]
    assert figures["gdnsd_default_withdraw_ms_p50"] is None  # --smoke: the defaults take 100 s
    if figures["gdnsd_fast_withdraw_ms_p50"] is None:
        assert not can_install(), (
            f"gdnsd could be installed here but was not measured: {figures['gdnsd_note']}"
        )
        pytest.skip(f"gdnsd cannot be had here (not root with apt-get): {figures['gdnsd_note']}")
    for key in (
        "gdnsd_fast_withdraw_ms_p50",
        "ratio_gdnsd_fast_vs_router_explicit",
        "ratio_gdnsd_fast_vs_router_silent",
    ):
        assert is_number(figures[key]), (key, figures[key])


def test_bench_hardening_smoke(tmp_path: Path) -> None:
    """The flood, the slow TCP clients and the pktinfo runs, small: every reply well formed,
    no worker lost, the router answering after; the RRL attack within its bound; the cookie
    runs measured, after the router echoed a valid cookie."""
    if not shutil.which("dnsperf") and not can_install():
        pytest.skip("dnsperf is not installed and cannot be (not root with apt-get)")
    bench = load_script(REPO / "loadtest" / "bench_hardening.py")
    figures = smoke("bench_hardening.py", tmp_path)
    assert "--smoke" in figures["command"]
    for key in bench.CONTRACT_KEYS:
        assert key in figures, key
    for key in ("fuzz_packets", "fuzz_crashes", "fuzz_malformed_replies", "fuzz_worker_restarts",
                "pktinfo_overhead_ratio", "tcp_slowloris_connections", "tcp_fresh_query_ms_p99"):  # fmt: skip
        assert is_number(figures[key]), (key, figures[key])
    assert figures["fuzz_packets"] >= 20_000 and figures["fuzz_tcp_messages"] > 0
    assert figures["fuzz_crashes"] == 0 and figures["fuzz_worker_restarts"] == 0
    assert figures["fuzz_malformed_replies"] == 0, figures["fuzz_malformed_examples"]
    assert figures["valid_query_after"] == {"udp": True, "tcp": True}
    assert figures["router_log_tracebacks"] == 0, figures["router_log_problem_lines"]
    for key in ("rrl_attack_full_answers_ratio", "rrl_legit_answered_ratio", "rrl_overhead_ratio"):
        assert is_number(figures[key]), (key, figures[key])
    # The flooding source got no more full answers than a second's burst plus the refill.
    assert figures["rrl_attack_full_answers_ratio"] <= figures["rrl_attack_full_answers_bound"]
    assert figures["rrl_attack_truncated"] > 0 and figures["rrl_legit_queries"] > 0
    assert is_number(figures["cookie_overhead_ratio"]) and figures["cookie_echo_checked"] is True


def test_bench_dnssec_smoke(tmp_path: Path) -> None:
    """Signing figures on the sample, the router with and without DO, PowerDNS signing its LUA
    answers online, and a validating Unbound in front of the router."""
    contract = load_script(REPO / "loadtest" / "bench_dnssec.py").CONTRACT_KEYS
    figures = smoke("bench_dnssec.py", tmp_path)
    if figures.get("pdns_qps_do") is None or figures.get("unbound_validated") is None:
        if not can_install():
            pytest.skip(
                f"a peer cannot be installed here: {figures.get('pdns_note')} {figures.get('unbound_note')}"
            )
    for key in contract:
        value = figures.get(key)
        assert (value is True) if key == "unbound_validated" else is_number(value), (key, value)
    assert figures["signed_rrsets"] > 0 and figures["sign_incremental_samples"] == 3
    assert figures["router_lost_do"] == 0 and figures["router_qps_do"] > 0
    assert all(figures["unbound_ad"].values()), figures["unbound_ad"]
