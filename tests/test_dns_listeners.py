"""Several DNS listeners in one router: --listen repeated, or listen: in deployment.yaml, and
what is refused (tests/test_dns_service_address.py serves v4 and v6 from one process in
network namespaces)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import pytest
import yaml

from tests.conftest import REPO, make_deployment, start_router


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(host: str, port: int) -> bool:
    reply = dns.query.udp(
        dns.message.make_query("www.cdn.example", "A"), host, port=port, timeout=3
    )
    tcp = dns.query.tcp(dns.message.make_query("www.cdn.example", "A"), host, port=port, timeout=3)
    return reply.rcode() == 0 and bool(reply.answer) and tcp.rcode() == 0 and bool(tcp.answer)


def test_listen_repeats_and_every_address_answers(deployment_dir: Path, tmp_path: Path) -> None:
    router = start_router(deployment_dir, tmp_path / "router.log", workers=1,
                          listen=["127.0.0.1:0", "127.0.0.2:0", "[::1]:0"])  # fmt: skip
    try:
        assert len(router.listeners) == 3
        for text in router.listeners:
            host, _, port = text.rpartition(":")
            assert _answers(host.strip("[]"), int(port)), text
        with urllib.request.urlopen(f"{router.api}/v1/status", timeout=5) as response:  # noqa: S310
            status = json.loads(response.read())
        assert (
            status["listeners"] == list(router.listeners) and status["dns"] == router.listeners[0]
        )
    finally:
        router.stop()
        router.process.stdout.close()


def test_listen_from_deployment_yaml(tmp_path: Path) -> None:
    zones = make_deployment(tmp_path)
    ports = (_free_port(), _free_port())
    settings = yaml.safe_load((zones / "deployment.yaml").read_text())
    settings["listen"] = [f"127.0.0.1:{ports[0]}", f"127.0.0.3:{ports[1]}"]
    (zones / "deployment.yaml").write_text(yaml.safe_dump(settings))
    router = start_router(zones, tmp_path / "router.log", workers=1, listen=())
    try:
        assert router.listeners == (f"127.0.0.1:{ports[0]}", f"127.0.0.3:{ports[1]}")
        assert _answers("127.0.0.3", ports[1])
    finally:
        router.stop()
        router.process.stdout.close()


def _serve(zones: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "router.cli", "serve", "--zones", str(zones), *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip


def test_no_address_at_all_is_refused_saying_where_to_give_one(deployment_dir: Path) -> None:
    result = _serve(deployment_dir)
    assert result.returncode == 2
    assert "--listen" in result.stderr and "deployment.yaml" in result.stderr


def test_the_same_address_twice_is_refused(deployment_dir: Path) -> None:
    port = _free_port()
    result = _serve(
        deployment_dir, "--listen", f"127.0.0.1:{port}", "--listen", f"127.0.0.1:{port}"
    )
    assert result.returncode == 1 and "given twice" in result.stderr


@pytest.mark.parametrize(
    ("value", "problem"),
    [(["::1:53"], "brackets"), (["dns.example:53"], "not an IP address"), (["127.0.0.1"], "HOST:PORT"),
     (["127.0.0.1:53", "127.0.0.1:53"], "twice")],
)  # fmt: skip
def test_a_bad_listen_in_deployment_yaml_names_the_entry(tmp_path: Path, value: list, problem: str) -> None:  # fmt: skip
    zones = make_deployment(tmp_path)
    settings = yaml.safe_load((zones / "deployment.yaml").read_text())
    settings["listen"] = value
    (zones / "deployment.yaml").write_text(yaml.safe_dump(settings))
    result = subprocess.run([sys.executable, "-m", "router.cli", "check", str(zones)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert result.returncode != 0
    assert "listen" in result.stderr and problem in result.stderr, result.stderr
