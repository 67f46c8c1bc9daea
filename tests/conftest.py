"""Shared fixtures: a deployment directory, an in-process responder, a real server."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
API_TOKEN = "test-token-0123456789"


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes from a stream socket (TCP DNS framing)."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    return data


def load_script(path: Path):  # noqa: ANN201 - the module
    """Import a script that is not in a package (loadtest/*.py) as a module named after it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def make_deployment(root: Path) -> Path:
    """The sample deployment plus the protocol-test zone, laid out like the repo."""
    shutil.copytree(REPO / "zones", root / "zones")
    shutil.copytree(
        REPO / "geodata", root / "geodata", ignore=shutil.ignore_patterns("*.py", "LICENSES")
    )
    shutil.copy(FIXTURES / "edge.example.zone", root / "zones" / "edge.example.zone")
    return root / "zones"


@pytest.fixture(scope="session")
def deployment_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_deployment(tmp_path_factory.mktemp("deployment"))


@dataclass
class RunningRouter:
    process: subprocess.Popen
    host: str
    port: int
    api: str | None
    token: str
    log: Path
    telemetry: tuple[str, int] | None = None
    listeners: tuple[str, ...] = ()  # every DNS address of READY (host and port are the first)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def start_router(
    zones: Path,
    log: Path,
    *extra: str,
    api: bool = True,
    workers: int = 2,
    listen: Sequence[str] = ("127.0.0.1:0",),
    prefix: Sequence[str] = (),
    ready_timeout: float = 120.0,
) -> RunningRouter:
    """Start ``router serve`` (on loopback port 0 unless ``listen`` says otherwise) and wait
    for its READY line. ``prefix``: a command it runs under (``ip netns exec NS``);
    ``ready_timeout``: seconds (a world-scale deployment compiles for minutes on busy cores)."""
    listeners = [arg for address in listen for arg in ("--listen", address)]
    args = [*prefix, sys.executable, "-m", "router.cli", "serve", "--zones", str(zones), *listeners,
            "--workers", str(workers), *extra]  # fmt: skip
    if api:
        args += ["--api", "127.0.0.1:0"]
    env = {**os.environ, "ROUTER_API_TOKEN": API_TOKEN}
    handle = open(log, "w")
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=handle, env=env, text=True, cwd=REPO
    )
    handle.close()
    deadline = time.monotonic() + ready_timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = re.match(r"READY dns=(([^,\s]+):(\d+)\S*) api=(\S+) telemetry=(\S+)", line)
        if match:
            api_url = None if match.group(4) == "off" else f"http://{match.group(4)}"
            telemetry = None
            if match.group(5) != "off":
                host, _, port = match.group(5).rpartition(":")
                telemetry = (host, int(port))
            return RunningRouter(process, match.group(2), int(match.group(3)), api_url, API_TOKEN, log,
                                 telemetry, tuple(match.group(1).split(",")))  # fmt: skip
    process.kill()
    process.wait()
    raise RuntimeError(f"router did not start; log:\n{log.read_text()}")


@pytest.fixture(scope="session")
def router(deployment_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real router (2 workers, API on) shared by read-only tests."""
    running = start_router(
        deployment_dir, tmp_path_factory.mktemp("logs") / "router.log", "--tcp-idle-timeout", "2"
    )
    yield running
    running.stop()
    assert running.process.stdout is not None
    running.process.stdout.close()


# The signed PowerDNS peer (loadtest/dnssec/pdns_signed.py) of the DNSSEC peer tests: rules for
# sample-map clients in different ISPs (the README's tour), each with its own node pair.
SIGNED_PDNS_SUBNETS = ["83.44.10.0/24", "90.0.0.0/24", "2.80.0.0/24", "8.8.8.0/24"]


@pytest.fixture(scope="module")
def signed_pdns_peers():
    """The throughput bench's peer configuration of the sample, for SIGNED_PDNS_SUBNETS."""
    from loadtest.dnssec import pdns_signed

    return pdns_signed.sample_peers(REPO / "zones", SIGNED_PDNS_SUBNETS)


@pytest.fixture(scope="module")
def signed_pdns(signed_pdns_peers, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001
    """A signed PowerDNS serving ``peers`` on loopback (skipped, saying why, if it cannot be had)."""
    from loadtest.dnssec import pdns_signed

    notes = pdns_signed.ensure_packages()
    if notes:
        pytest.skip("PowerDNS cannot be had: " + "; ".join(notes.values()))
    server = pdns_signed.start_signed_pdns(
        signed_pdns_peers, tmp_path_factory.mktemp("pdns-signed")
    )
    yield server
    server.stop()
