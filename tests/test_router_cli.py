"""The command-line contract: ``router explain`` and the failure modes of ``router serve``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from router.cli import main
from tests.conftest import REPO


def test_explain_shows_group_candidates_and_answer(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["explain", "--zones", str(REPO / "zones"), "video.cdn.example.", "83.44.10.0/24"])
        == 0
    )
    out = capsys.readouterr().out
    assert "AS3352 TELEFONICA DE ESPANA" in out and "located by ecs" in out
    assert 'policy:  "video" (cdn.example.)' in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "latency_ms" in line)
    rows = lines[header + 1 : header + 19]
    assert len(rows) == 18  # every node of the pool is a candidate
    first = rows[0].split()
    # rank, node, health, latency, source, km, on-net, bonus, load, score
    assert first[:3] == ["1", "tef-mad-1", "up"] and first[4] == "measured" and first[6] == "yes"
    assert float(first[9]) == pytest.approx(float(first[3]) - 25.0)  # on-net bonus of policy video
    assert "answer:  NOERROR, TTL 20, ECS scope /11" in out
    assert "video.cdn.example. 20 IN A 192.0.2.11" in out


def test_explain_json_and_plain_ip(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "explain",
                "--zones",
                str(REPO / "zones"),
                "--json",
                "--qtype",
                "AAAA",
                "www.cdn.example.",
                "89.153.10.20",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["located_by"] == "source" and result["ecs_scope"] is None
    assert [c["node"] for c in result["candidates"] if c["chosen"]] == ["nos-lis-1", "nos-opo-1"]
    assert result["answer"] == [
        "www.cdn.example. 30 IN AAAA 2001:db8:51::1",
        "www.cdn.example. 30 IN AAAA 2001:db8:52::1",
    ]
    assert {"latency_ms", "onnet", "load_penalty_ms", "state", "score"} <= set(
        result["candidates"][0]
    )


def test_explain_static_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["explain", "--zones", str(REPO / "zones"), "origin.cdn.example.", "83.44.10.0/24"])
        == 0
    )
    out = capsys.readouterr().out
    assert "policy:  none (static answer from the zone file)" in out
    assert "ECS scope /0" in out and "203.0.113.80" in out


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router.cli", "serve", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=env)  # fmt: skip


def test_serve_refuses_api_without_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ROUTER_API_TOKEN"}
    result = _serve("--zones", "zones", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0", env=env)
    assert result.returncode == 2
    assert "--api needs a token: set ROUTER_API_TOKEN or pass --api-token-file" in result.stderr


@pytest.mark.parametrize("listen", ["localhost", "127.0.0.1:", "127.0.0.1:99999"])
def test_serve_rejects_bad_listen_address(listen: str) -> None:
    result = _serve("--zones", "zones", "--listen", listen)
    assert result.returncode == 2 and "--listen" in result.stderr


def test_serve_refuses_a_broken_deployment(tmp_path: Path) -> None:
    (tmp_path / "zones").mkdir()
    result = _serve("--zones", str(tmp_path / "zones"), "--listen", "127.0.0.1:0")
    assert result.returncode == 1
    assert f"{tmp_path / 'zones' / 'deployment.yaml'}:1: cannot read file" in result.stderr


def test_serve_refuses_a_taken_port_before_compiling() -> None:
    """A port another server holds is refused at once, not after the first start's compile."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve("--zones", "zones", "--listen", f"127.0.0.1:{port}", "--workers", "1")
    assert result.returncode == 1
    assert f"router serve: cannot listen on 127.0.0.1:{port}: [Errno 98]" in result.stderr
    assert "planning the first routing table" not in result.stderr


def test_serve_refuses_telemetry_without_health_settings(tmp_path: Path) -> None:
    from tests.conftest import make_deployment

    zones = make_deployment(tmp_path)
    text = (zones / "deployment.yaml").read_text()
    (zones / "deployment.yaml").write_text(text[: text.index("\n# Heartbeat telemetry")] + "\n")
    result = _serve("--zones", str(zones), "--listen", "127.0.0.1:0", "--telemetry", "127.0.0.1:0")
    assert result.returncode == 1
    assert "--telemetry needs a health: section with keys in deployment.yaml" in result.stderr


def test_explain_shows_last_known_node_states_and_reasons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import make_deployment

    zones = make_deployment(tmp_path)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "node-state.json").write_text(json.dumps({"nodes": {
        "tef-mad-1": {"state": "down", "reason": "power off", "admin_state": None, "since": 0},
        "tef-mad-2": {"state": "up", "reason": "heartbeats good", "admin_state": "drain", "since": 0},
    }}))  # fmt: skip
    assert (
        main(["explain", "--zones", str(zones), "--json", "video.cdn.example.", "83.44.10.0/24"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    by_node = {c["node"]: c for c in result["candidates"]}
    assert by_node["tef-mad-1"]["state"] == "down" and "power off" in by_node["tef-mad-1"]["reason"]
    assert by_node["tef-mad-2"]["state"] == "draining" and "admin" in by_node["tef-mad-2"]["reason"]
    assert [c["node"] for c in result["candidates"] if c["chosen"]] == ["tef-svq-1", "tef-bcn-1"]
