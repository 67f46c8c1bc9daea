"""docker-compose.yml and the Dockerfiles: valid for docker-compose (Debian's), and everything
they name is in the repository: the images script/image builds, mounted files, the commands and
their options, the configs of BIRD, ExaBGP and Prometheus; and the safety rules of the file (no
secret in it, every container hardened, every port on loopback). Static checks, with no Docker
engine: tests/test_container.py builds the images and runs the stack."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loadtest.cli import build_parser as loadtest_parser
from router.cli import build_parser as router_parser
from tests.conftest import REPO

# Executables the images provide besides the router's own (Debian bookworm with iproute2).
BASE_EXECUTABLES = {"sh", "python", "ip", "bird", "setpriv"}
# The Dockerfile behind each image (script/image builds them all).
DOCKERFILES = {
    "router:local": REPO / "Dockerfile",
    "router-route-server:local": REPO / "deploy/bird/Dockerfile",
    "router-prometheus:local": REPO / "deploy/prometheus/Dockerfile",
}


def _compose_config() -> dict:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip(
            "docker-compose is not installed (script/bootstrap --test installs Debian's docker-compose)"
        )
    result = subprocess.run([binary, "-f", str(REPO / "docker-compose.yml"), "config"], cwd=REPO,
                            capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def compose() -> dict:
    return _compose_config()


def _dockerfile_copies(dockerfile: Path) -> dict[str, Path]:
    """In-image path -> repository path for each COPY of a Dockerfile (after WORKDIR)."""
    workdir = "/"
    out = {}
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["WORKDIR"]:
            workdir = words[1]
        elif words[:1] == ["COPY"] and not words[1].startswith("--from="):
            *sources, dest = words[1:]
            for source in sources:
                target = (
                    dest
                    if dest.startswith("/")
                    else f"{workdir.rstrip('/')}/{dest.removeprefix('./')}"
                )
                if len(sources) > 1 or dest.endswith("/"):
                    target = f"{target.rstrip('/')}/{Path(source).name}"
                out[target.rstrip("/")] = dockerfile.parent / source
    return out


def test_every_dockerfile_copies_only_what_exists() -> None:
    for dockerfile in [REPO / "Dockerfile", *REPO.glob("deploy/*/Dockerfile")]:
        for target, source in _dockerfile_copies(dockerfile).items():
            assert source.exists(), f"{dockerfile}: COPY {source} -> {target}: no such file"


def test_compose_is_valid_and_names_only_what_exists(compose: dict) -> None:
    services = compose["services"]
    assert {
        "route-server",
        "router-a",
        "router-b",
        "announcer-a",
        "announcer-b",
        "nodes",
        "prometheus",
        "loadtest",
    } <= set(services)
    built = dict(re.findall(r"^build (\S+) (\S+)$", (REPO / "script/image").read_text(), re.M))
    assert set(built) == set(DOCKERFILES)
    for image, context in built.items():
        assert (REPO / context / "Dockerfile").resolve() == DOCKERFILES[image].resolve()
    for name, service in services.items():
        image = service["image"]
        assert "build" not in service, f"{name}: images come from script/image, not compose"
        assert image in built, f"{name}: image {image} is not one script/image builds"
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            kind = (
                volume.get("type")
                if isinstance(volume, dict)
                else ("bind" if source.startswith((".", "/")) else "volume")
            )
            if kind == "bind":
                path = Path(source)
                assert path.exists() and REPO in path.resolve().parents, (
                    f"{name}: mounts {source}, not a file of the repository"
                )
            else:
                assert source in compose.get("volumes", {}), (
                    f"{name}: volume {source} is not declared"
                )


def _dockerfile_json(dockerfile: Path, instruction: str) -> list[str]:
    """ENTRYPOINT or CMD of a Dockerfile in its JSON form ([] if absent)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    match = re.search(rf"^{instruction}\s+(\[.*\])\s*$", text, re.M)
    return json.loads(match.group(1)) if match else []


def _argv(service: dict) -> list[str]:
    dockerfile = DOCKERFILES[service["image"]]
    entrypoint = service.get("entrypoint") or _dockerfile_json(dockerfile, "ENTRYPOINT")
    command = service.get("command") or _dockerfile_json(dockerfile, "CMD")
    entrypoint = [entrypoint] if isinstance(entrypoint, str) else list(entrypoint)
    command = shlex.split(command) if isinstance(command, str) else list(command)
    return entrypoint + command


def _image_paths() -> dict[str, Path]:
    return _dockerfile_copies(REPO / "Dockerfile")


def _repo_path(in_image: str) -> Path | None:
    """The repository file an in-image path comes from (None: not from the repository)."""
    for target, source in sorted(_image_paths().items(), key=lambda kv: -len(kv[0])):
        if in_image == target or in_image.startswith(target + "/"):
            return source / in_image[len(target) :].lstrip("/")
    return None


def _check_router_command(argv: list[str], where: str) -> None:
    program, *args = argv
    assert program in ("router", "loadtest"), (
        f"{where}: {program} is not one of the image's commands"
    )
    scripts = (REPO / "pyproject.toml").read_text()
    assert re.search(rf'^{program} = "', scripts, re.M), (
        f"{where}: {program} is not a console script of pyproject.toml"
    )
    parser = router_parser() if program == "router" else loadtest_parser()
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"{where}: {program} rejects {args}") from exc
    for arg in args:
        if arg.startswith("/app/"):
            source = _repo_path(arg)
            assert source is not None and source.exists(), f"{where}: {arg} is not in the image"


def test_every_command_is_the_images_own_with_valid_options(compose: dict) -> None:
    checked = 0
    for name, service in compose["services"].items():
        if service["image"] == "router-prometheus:local":
            continue
        argv = _argv(service)
        if argv[:2] == ["sh", "-c"]:
            # "ip addr replace ... && exec router serve ...": each part on its own.
            for part in re.split(r"\s*&&\s*", argv[2].strip()):
                words = shlex.split(part)
                words = words[1:] if words[0] == "exec" else words
                if words[0] in BASE_EXECUTABLES:
                    continue
                _check_router_command(words, name)
                checked += 1
        elif argv[:3] == ["python", "-m", "exabgp"]:
            continue  # checked with its config below
        elif argv[0] in BASE_EXECUTABLES:
            continue
        else:
            _check_router_command(argv, name)
            checked += 1
    assert checked >= 4  # router-a, router-b, nodes, loadtest


def test_exabgp_configs_validate_and_run_the_announcer(tmp_path: Path, compose: dict) -> None:
    for side in ("a", "b"):
        conf = REPO / "deploy" / "exabgp" / f"router-{side}.conf"
        service = compose["services"][f"announcer-{side}"]
        assert service["network_mode"] == f"service:router-{side}"
        text = conf.read_text()
        run = re.search(r"run (\S+) (.+);", text)
        assert run and run.group(1) == "/opt/router/bin/router"
        _check_router_command(["router", *shlex.split(run.group(2))], conf.name)
        # The image's path to `router` is not this machine's: validate with ours.
        local = tmp_path / conf.name
        local.write_text(
            text.replace("/opt/router/bin/router", str(Path(sys.executable).parent / "router"))
        )
        result = subprocess.run(
            [sys.executable, "-m", "exabgp", "validate", str(local)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        address = compose["services"][f"router-{side}"]["networks"]["anycast"]["ipv4_address"]
        assert (
            f"local-address {address};" in text
            and f"neighbor {address} as" in (REPO / "deploy/bird/bird.conf").read_text()
        )


def test_bird_config_parses(compose: dict) -> None:
    bird = shutil.which("bird") or ("/usr/sbin/bird" if Path("/usr/sbin/bird").exists() else None)
    if bird is None:
        pytest.skip("BIRD 2 is not installed (script/bootstrap --test installs bird2)")
    result = subprocess.run(
        [bird, "-p", "-c", str(REPO / "deploy/bird/bird.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "router id " + compose["services"]["route-server"]["networks"]["anycast"]["ipv4_address"]
        in (REPO / "deploy/bird/bird.conf").read_text()
    )


def test_prometheus_scrapes_both_routers_api(compose: dict) -> None:
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert targets == {"router-a:8053", "router-b:8053"}
    assert all(
        job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"]
    )
    for side in ("a", "b"):
        assert "--api 0.0.0.0:8053" in " ".join(_argv(compose["services"][f"router-{side}"]))


def test_no_secret_ships_and_every_container_is_hardened(compose: dict) -> None:
    text = (REPO / "docker-compose.yml").read_text()
    assert "ROUTER_API_TOKEN" not in text and "replace-me" not in text
    assert "node-keys.sample" not in text
    secrets = compose["secrets"]
    assert set(secrets) == {"node-keys", "api-token"}
    for secret in secrets.values():
        path = Path(secret["file"])
        assert REPO / "secrets" in path.parents, f"{path}: secrets come from ./secrets"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO)
        assert ignored.returncode == 0, f"{path} is not git-ignored"
    for side in ("a", "b"):
        argv = _argv(compose["services"][f"router-{side}"])
        assert argv[argv.index("--keys") + 1] == "/run/secrets/node-keys"
        assert argv[argv.index("--api-token-file") + 1] == "/run/secrets/api-token"
    for name, service in compose["services"].items():
        assert service.get("read_only") is True, f"{name}: root file system not read-only"
        assert service.get("cap_drop") == ["ALL"], f"{name}: capabilities not dropped"
        for port in service.get("ports", []):
            host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name}: publishes {port} beyond loopback"
        if service["image"] == "router:local" and service.get("user") != "root":
            assert service.get("cap_add") == ["NET_BIND_SERVICE"], name


def test_the_build_context_leaves_out_every_keys_file() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "secrets" in ignored and "**/node-keys*.yaml" in ignored
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "\nUSER router\n" in dockerfile
