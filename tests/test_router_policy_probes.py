"""Per-policy probes: verdicts with hysteresis, URL templates, and their config checks."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from router.config import load_deployment
from router.config.nodes import Node
from router.config.policy import PolicyProbe
from router.config.problems import ConfigError
from router.health.policy_probes import PolicyProbeState, probe_url


def test_failures_in_a_row_take_a_node_out_and_good_ones_bring_it_back() -> None:
    probe = PolicyProbe(url="http://{ipv4}/video", failures=2, recover_after=3)
    state = PolicyProbeState([None, probe], ("a", "b"))
    assert not state.report(1, "a", False, "HTTP 503")
    assert not state.report(1, "a", True, "HTTP 200")  # the streak restarts
    assert not state.report(1, "a", False, "HTTP 503")
    assert state.report(1, "a", False, "timeout")  # two in a row: out
    assert state.down.tolist() == [[False, False], [True, False]]
    assert state.result(1, "a").state == "down" and "(timeout)" in state.result(1, "a").reason
    assert not state.report(1, "a", True, "HTTP 200")
    assert not state.report(1, "a", True, "HTTP 200")
    assert not state.report(1, "a", False, "HTTP 503")  # a failure resets the good streak
    for _ in range(2):
        assert not state.report(1, "a", True, "HTTP 200")
    assert state.report(1, "a", True, "HTTP 200")  # three good in a row: back
    assert not state.down.any()


def test_probe_url_templates() -> None:
    node = Node(id="n1", asn=64500, site="s", lat=0.0, lon=0.0, ipv4=ipaddress.IPv4Address("192.0.2.1"),
                ipv6=ipaddress.IPv6Address("2001:db8::1"), capacity_gbps=10, health_url="http://h:1/health/n1")  # fmt: skip
    assert probe_url("{health_url}/video", node) == "http://h:1/health/n1/video"
    assert probe_url("tcp://{ipv4}:443", node) == "tcp://192.0.2.1:443"
    assert probe_url("https://{ipv6}/x?node={id}", node) == "https://[2001:db8::1]/x?node=n1"


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        (
            "{url: 'http://{ipv4}/{port}'}",
            "probe url names {port}; valid: {health_url}, {ipv4}, {ipv6}, {id}",
        ),
        (
            "{url: '{health_url}/video'}",
            "probe url uses {health_url} but these nodes have none: tef-mad-1",
        ),
        ("{url: 'ftp://{ipv4}'}", "String should match pattern"),
        ("{failures: 0, url: 'tcp://{ipv4}:443'}", "greater than or equal to 1"),
    ],
    ids=["unknown_field", "no_health_url", "scheme", "failures"],
)
def test_bad_probe_is_reported_with_its_line(
    tmp_path: Path, deployment_dir: Path, probe: str, message: str
) -> None:
    shutil.copytree(deployment_dir.parent, tmp_path, dirs_exist_ok=True)
    zones = tmp_path / "zones"
    policy_file = zones / "cdn.example.policy.yaml"
    text = policy_file.read_text()
    line = next(
        line for line in text.splitlines(keepends=True) if line.startswith("    onnet_bonus_ms: 25")
    )
    policy_file.write_text(text.replace(line, line + f"    probe: {probe}\n", 1))
    with pytest.raises(ConfigError) as caught:
        load_deployment(zones)
    assert message in str(caught.value)
    assert "cdn.example.policy.yaml:" in str(caught.value)
