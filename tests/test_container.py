"""The image and docker-compose.yml, built and run for real: a private Docker engine
(script/docker-engine), the images made from the Debian mirror (script/image), secrets made by
script/secrets, then the whole stack up. Checked from outside: who the processes run as and with
which capabilities, the read-only root file systems, no keys in the image, DNS answers over UDP
and TCP from both routers, nodes in service from the simulator's heartbeats, the anycast route
at the route server from both announcers, Prometheus scraping both routers, the API token, and
clear failures without secrets or with secrets others can read.

Needs root, dockerd (Debian's docker.io), docker-compose and debootstrap, which
script/bootstrap --test installs; skips, saying which is missing, elsewhere. The stack's
networks use documentation addresses only (198.51.100.0/24, 192.0.2.53) and every port it
publishes is on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest
import yaml

from tests.conftest import REPO

PROJECT = f"routertest{os.getpid()}"
ROUTER_UID = 10053
CAP_NET_BIND_SERVICE = 1 << 10
SERVICE_ADDRESS = "192.0.2.53/32"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "not root: dockerd and debootstrap need root"
    for tool in ("dockerd", "docker", "docker-compose", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (script/bootstrap --test installs it)"
    return None


pytestmark = [pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _run(argv: list[str], env: dict[str, str], timeout: float, check: bool = True, **kw):
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


@dataclass
class Stack:
    env: dict[str, str]
    directory: Path
    token: str

    def compose(self, *args: str, timeout: float = 300, check: bool = True):
        argv = ["docker-compose", "-p", PROJECT, "-f", str(self.directory / "docker-compose.yml")]
        return _run([*argv, *args], self.env, timeout, check, cwd=self.directory)

    def docker(self, *args: str, timeout: float = 120, check: bool = True):
        return _run(["docker", *args], self.env, timeout, check)

    def port(self, service: str, port: str) -> tuple[str, int]:
        out = self.compose("port", *(["--protocol", "udp"] if port.endswith("/udp") else []),
                           service, port.split("/")[0]).stdout.strip()  # fmt: skip
        host, _, number = out.rpartition(":")
        assert host == "127.0.0.1", f"{service} {port} is published on {out}, not on loopback"
        return host, int(number)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def exec(self, service: str, command: str, check: bool = True):
        return self.compose("exec", "-T", service, "sh", "-c", command, timeout=60, check=check)

    def api(self, service: str, path: str, method: str = "GET", body: bytes | None = None,
            token: str | None = None) -> tuple[int, dict]:  # fmt: skip
        host, port = self.port(service, "8053")
        request = urllib.request.Request(f"http://{host}:{port}{path}", data=body, method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            # A PUT returns once every worker serves the change, which may wait for a full plan
            # (and for a refine to stop first): seconds on a loaded CI machine.
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


def _wait(what: str, check, timeout: float, interval: float = 1.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, AssertionError, dns.exception.DNSException) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def _test_compose(source: Path, directory: Path) -> None:
    """The repository's compose file with its published host ports left to Docker (so the test
    never collides with a router already on 8053), in ``directory`` beside a copy of deploy/."""
    config = yaml.safe_load(source.read_text())
    for service in config["services"].values():
        service["ports"] = [
            f"127.0.0.1::{p.split(':')[-1]}" for p in service.get("ports", [])
        ]  # fmt: skip
    (directory / "docker-compose.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copytree(REPO / "deploy", directory / "deploy")


def _wait_for_background_build(timeout: float = 1200) -> None:
    """script/test starts script/image in the background (var/image-build.pid) so the images
    build while the other tests run: wait for it, and fail with its log if it failed."""
    pidfile, rcfile = REPO / "var" / "image-build.pid", REPO / "var" / "image-build.rc"
    if not pidfile.exists():
        return
    deadline = time.monotonic() + timeout
    while not rcfile.exists() and Path(f"/proc/{pidfile.read_text().strip()}").exists():
        assert time.monotonic() < deadline, "the background image build did not finish in time"
        time.sleep(1)
    if not rcfile.exists():
        return  # ended without a status (killed): the fixture builds them itself
    rc = rcfile.read_text().strip()
    log = (REPO / "var" / "image-build.log").read_text(errors="replace")[-4000:]
    assert rc == "0", f"the background image build (script/image) failed ({rc}):\n{log}"


@pytest.fixture(scope="module")
def engine() -> Iterator[dict[str, str]]:
    pidfile = REPO / "var" / "docker" / "dockerd.pid"
    already = pidfile.exists() and Path(f"/proc/{pidfile.read_text().strip()}").exists()
    started = _run([str(REPO / "script" / "docker-engine"), "start"], dict(os.environ), 120)
    env = dict(os.environ, DOCKER_HOST=started.stdout.strip().split("=", 1)[1])
    try:
        _wait_for_background_build()
        _run([str(REPO / "script" / "image")], env, 1200)  # quick when nothing changed
        yield env
    finally:
        if not already:
            _run([str(REPO / "script" / "docker-engine"), "stop"], dict(os.environ), 60)


@pytest.fixture(scope="module")
def stack(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("compose")
    _test_compose(REPO / "docker-compose.yml", directory)
    _run([str(REPO / "script" / "secrets"), str(directory / "secrets")], engine, 120)
    stack = Stack(engine, directory, (directory / "secrets" / "api-token").read_text().strip())
    try:
        stack.compose("up", "-d")
        yield stack
    finally:
        logs = stack.compose("logs", "--tail", "30", check=False, timeout=60)
        print(logs.stdout[-20000:])
        stack.compose("down", "-v", "--remove-orphans", check=False, timeout=180)


def _status(stack: Stack, container: str) -> dict[str, str]:
    out = stack.docker("exec", container, "cat", "/proc/1/status").stdout
    return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)


def test_the_image_holds_no_keys_and_runs_as_router(stack: Stack) -> None:
    config = json.loads(stack.docker("image", "inspect", "router:local").stdout)[0]["Config"]
    assert config["User"] == "router"
    found = stack.docker("run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "sh", "router:local",
                         "-c", "find / -xdev \\( -name 'node-keys*' -o -name 'api-token*' \\) -print")  # fmt: skip
    assert found.stdout.strip() == "", f"secrets in the image: {found.stdout}"
    caps = stack.docker("run", "--rm", "--network", "none", "--entrypoint", "sh", "router:local",
                        "-c", "getcap /opt/router/bin/python* /usr/bin/python3*")  # fmt: skip
    lines = [line for line in caps.stdout.splitlines() if line.strip()]
    assert lines and all(line.endswith("cap_net_bind_service=ep") for line in lines), caps.stdout
    assert not any(line.startswith("/usr/bin/") for line in lines), "system python has caps"


def test_routers_run_unprivileged_with_only_net_bind_service(stack: Stack) -> None:
    for service in ("router-a", "router-b", "nodes"):
        container = _wait(f"{service} running", lambda s=service: stack.container(s), 60)
        status = _wait(f"{service} pid 1", lambda c=container: _status(stack, c), 60)
        uids = status["Uid"].split()
        assert set(uids) == {str(ROUTER_UID)}, f"{service} runs as {uids}"
        for field in ("CapEff", "CapPrm", "CapBnd"):
            assert int(status[field], 16) == CAP_NET_BIND_SERVICE, (
                f"{service} {field} {status[field]}"
            )
        assert int(status["CapAmb"], 16) == 0 and int(status["CapInh"], 16) == 0


def test_every_container_has_a_read_only_root(stack: Stack) -> None:
    services = ["route-server", "router-a", "router-b", "announcer-a", "announcer-b", "nodes", "prometheus"]  # fmt: skip
    for service in services:
        container = stack.container(service)
        host_config = json.loads(stack.docker("inspect", container).stdout)[0]["HostConfig"]
        assert host_config["ReadonlyRootfs"] is True, service
        assert host_config["CapDrop"] == ["ALL"], service
    wrote = stack.exec("router-a", "touch /app/zones/x", check=False)
    assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr


def test_both_routers_answer_over_udp_and_tcp_from_node_heartbeats(stack: Stack) -> None:
    def nodes_up(service: str) -> int:
        code, body = stack.api(service, "/v1/nodes")
        assert code == 200
        up = sum(node["state"] == "up" for node in body["nodes"])
        return up if up >= 10 else 0  # most of the 18: the simulator's heartbeats got through

    for service in ("router-a", "router-b"):
        # A first start compiles the fast path (~30 s), then the hysteresis holds nodes down.
        _wait(f"{service}: nodes up from the simulator", lambda s=service: nodes_up(s), 240)
        query = dns.message.make_query("www.cdn.example", "A")
        host, port = stack.port(service, "53/udp")
        udp = _wait(f"{service} UDP", lambda h=host, p=port, q=query: dns.query.udp(q, h, port=p, timeout=2), 30)  # fmt: skip
        host, port = stack.port(service, "53/tcp")
        tcp = dns.query.tcp(query, host, port=port, timeout=5)
        for reply in (udp, tcp):
            assert reply.rcode() == 0 and reply.flags & dns.flags.AA
            addresses = [r.address for rrset in reply.answer for r in rrset if rrset.rdtype == dns.rdatatype.A]  # fmt: skip
            assert addresses, reply.to_text()


def test_the_route_server_hears_the_service_address_from_both_announcers(stack: Stack) -> None:
    def routes() -> str:
        out = stack.exec("route-server", "birdc -s /run/bird/bird.ctl show route all").stdout
        return out if "AS64601" in out and "AS64602" in out else ""

    out = _wait("192.0.2.53/32 from both routers", routes, 240, interval=2)
    assert SERVICE_ADDRESS in out
    lo = stack.exec("announcer-a", "ip -o addr show dev lo").stdout
    assert "192.0.2.53/32" in lo


def test_prometheus_scrapes_both_routers(stack: Stack) -> None:
    host, port = stack.port("prometheus", "9090")

    def targets() -> dict[str, str]:
        with urllib.request.urlopen(f"http://{host}:{port}/api/v1/targets", timeout=5) as r:  # noqa: S310
            active = json.loads(r.read())["data"]["activeTargets"]
        health = {t["labels"]["instance"]: t["health"] for t in active}
        return health if set(health.values()) == {"up"} else {}

    assert set(_wait("both targets up", targets, 120, interval=2)) == {
        "router-a:8053",
        "router-b:8053",
    }


def test_the_api_takes_only_the_generated_token(stack: Stack) -> None:
    body = json.dumps({"state": "down"}).encode()
    path = "/v1/nodes/tef-mad-1/admin-state"
    assert stack.api("router-a", path, "PUT", body)[0] == 401
    assert stack.api("router-a", path, "PUT", body, token="replace-me-with-a-secret")[0] == 401
    code, node = stack.api("router-a", path, "PUT", body, token=stack.token)
    assert code == 200 and node["admin_state"] == "down"
    code, node = stack.api("router-a", path, "PUT", b'{"state": "up"}', token=stack.token)
    assert code == 200 and node["admin_state"] is None


def test_up_without_secrets_fails_naming_them(engine: dict[str, str], tmp_path: Path) -> None:
    _test_compose(REPO / "docker-compose.yml", tmp_path)
    argv = ["docker-compose", "-p", f"{PROJECT}nosecrets", "-f", str(tmp_path / "docker-compose.yml")]  # fmt: skip
    try:
        result = _run([*argv, "up", "--no-start", "router-a"], engine, 120, check=False, cwd=tmp_path)  # fmt: skip
        assert result.returncode != 0
        assert "secrets/node-keys" in result.stderr + result.stdout  # router-a's, or the nodes'

    finally:
        _run([*argv, "down", "-v"], engine, 120, check=False, cwd=tmp_path)


def test_a_keys_file_others_can_read_is_refused(engine: dict[str, str], tmp_path: Path) -> None:
    _run([str(REPO / "script" / "secrets"), str(tmp_path / "secrets")], engine, 120)
    keys = tmp_path / "secrets" / "node-keys.yaml"
    keys.chmod(0o640)
    result = _run(["docker", "run", "--rm", "--network", "none", "--read-only",
                   "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE",
                   "--tmpfs", f"/var/cache/router:uid={ROUTER_UID}",
                   "-v", f"{keys}:/run/secrets/node-keys:ro",
                   "-v", f"{tmp_path / 'secrets' / 'api-token'}:/run/secrets/api-token:ro",
                   "router:local"], engine, 180, check=False)  # fmt: skip
    assert result.returncode != 0
    assert "/run/secrets/node-keys" in result.stderr and "chmod" in result.stderr, result.stderr
