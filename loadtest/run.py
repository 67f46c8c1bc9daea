"""One load-test run: start the router (or use a running one), play the scenario, write the results.

Everything goes to loopback: the router listens on 127.0.0.1, the resolvers send from
127.64.0.0 and up, the node simulator sends heartbeats to the router's telemetry port.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest.analyze import analyze, check
from loadtest.play import Player
from loadtest.population import build_catalogue, build_resolvers
from loadtest.scenario import Scenario
from loadtest.traffic import expected_queries, peak_rate
from router.config.deployment import Deployment
from router.simulator import Simulator
from router.steering.model import SteeringModel

REPO = Path(__file__).resolve().parents[1]
# dns= lists every listener, comma-separated: the first is the one used here.
READY = re.compile(r"READY dns=([^,\s]+):(\d+)\S* api=(\S+) telemetry=(\S+)")
START_TIMEOUT_S = 180  # a cold numba cache compiles the fast path first


class RunError(Exception):
    """The run could not start or went wrong in a way the result cannot show."""


@dataclass
class RouterProcess:
    process: subprocess.Popen | None  # None: a router this run did not start
    dns: tuple[str, int]
    telemetry: tuple[str, int] | None
    api: str | None
    log: Path | None

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        return self.process.returncode


def start_router(zones: Path, out: Path, workers: int, telemetry: bool) -> RouterProcess:
    """``router serve`` on loopback with a fresh state file (a run never inherits node states)."""
    log = out / "router.log"
    (out / "node-state.json").unlink(
        missing_ok=True
    )  # a run in the same directory starts afresh too
    args = [sys.executable, "-m", "router.cli", "serve", "--zones", str(zones), "--listen", "127.0.0.1:0",
            "--api", "127.0.0.1:0", "--workers", str(workers), "--state-file", str(out / "node-state.json")]  # fmt: skip
    if telemetry:
        args += ["--telemetry", "127.0.0.1:0"]
    env = {**os.environ, "ROUTER_API_TOKEN": secrets.token_hex(16)}
    with open(log, "w") as handle:
        process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=handle, env=env, text=True, cwd=REPO
        )
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = READY.match(line)
        if match:
            # Keep reading its stdout so the router never blocks on a full pipe.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            tel = None
            if match.group(4) != "off":
                host, _, port = match.group(4).rpartition(":")
                tel = (host, int(port))
            api = None if match.group(3) == "off" else f"http://{match.group(3)}"
            return RouterProcess(process, (match.group(1), int(match.group(2))), tel, api, log)
    process.kill()
    process.wait()
    raise RunError(
        f"the router did not start within {START_TIMEOUT_S} s; its log ({log}):\n{log.read_text()[-3000:]}"
    )


def node_addresses(model: SteeringModel) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    for i, (v4, v6) in enumerate(zip(model.node_ipv4, model.node_ipv6)):
        for address in (v4, v6):
            if address:
                out[bytes(address)] = i
    return out


def play_scenario(
    scenario: Scenario,
    scale: float,
    source: Path,
    deployment: Deployment,
    model: SteeringModel,
    router: RouterProcess,
    out: Path,
    seed: int,
    progress: bool = True,
) -> dict:
    """Play ``scenario`` against ``router``; write out/result.json and out/report.html."""
    health = deployment.health
    if scenario.failures and (
        router.telemetry is None or health is None or not deployment.node_keys
    ):
        raise RunError(
            "this scenario fails nodes through the node simulator, which needs the router's telemetry "
            "address and a deployment with health: (heartbeat keys) in deployment.yaml"
        )
    catalogue = build_catalogue(deployment, model, scenario.names, seed)
    resolvers = build_resolvers(model, scenario.resolvers, seed)
    interval = health.heartbeat_interval_s if health else 1.0
    high_water = health.high_water if health else 0.9
    simulator = None
    if router.telemetry is not None and health is not None and deployment.node_keys:
        simulator = Simulator(
            deployment.inventory, deployment.node_keys, router.telemetry, interval
        )
        for node in simulator.nodes.values():  # every node reports once before the first query
            simulator.send(node)
        time.sleep(min(1.0, interval))
    size = int(
        min(
            scenario.max_queries,
            expected_queries(scenario.traffic, scenario.duration_s) * 1.25 + 10_000,
        )
    )
    player = Player(
        scenario, catalogue, resolvers, router.dns, model.node_ids, node_addresses(model), high_water, simulator,
        seed, size,
    )  # fmt: skip
    try:
        play = _with_progress(player, scenario) if progress else player.run()
    finally:
        if simulator is not None:
            simulator.close()
    missed = health.missed_heartbeats if health else 3
    result = {
        "scenario": scenario.name,
        "description": scenario.description,
        "file": str(source),
        "duration_s": scenario.duration_s,
        "timeline_scale": scale,
        "seed": seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(play.started_wall)),
        "elapsed_s": round(play.elapsed_s, 3),
        "router": {
            "dns": f"{router.dns[0]}:{router.dns[1]}",
            "telemetry": None
            if router.telemetry is None
            else f"{router.telemetry[0]}:{router.telemetry[1]}",
            "started_by_loadtest": router.process is not None,
            "workers": scenario.router_workers if router.process is not None else None,
        },
        "resolvers": len(resolvers),
        "offered_peak_client_qps": round(peak_rate(scenario.traffic, scenario.duration_s), 1),
        "gbps_per_qps": scenario.traffic.gbps_per_qps,
        "events": [
            {"t_ms": round(e.t * 1000, 1), "command": e.command, "ack": e.ack} for e in play.events
        ],
    }
    result.update(analyze(scenario, play, model, catalogue, interval, missed, high_water))
    result["checks"] = check(scenario.expect, result)
    result["passed"] = all(c["ok"] for c in result["checks"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    from loadtest.report import render

    render(result, out)
    return result


def _with_progress(player: Player, scenario: Scenario):  # noqa: ANN202
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:  # a log file: its one final line, not cut at 80 columns
        console = Console(stderr=True, width=200)
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(), TextColumn("{task.fields[stats]}"),
    )  # fmt: skip
    with Progress(*columns, console=console, transient=False, refresh_per_second=4) as bar:
        task = bar.add_task(scenario.name, total=scenario.duration_s, stats="starting")

        def on_second(stats: dict) -> None:
            p99 = "-" if stats["p99_ms"] is None else f"{stats['p99_ms']:.2f} ms"
            text = (f"offered {stats['offered_qps']:,.0f}/s  sent {stats['sent']:,}/s  answered {stats['answered']:,}/s  "
                    f"cached {stats['cached']:,}/s  timeouts {stats['timeouts']}  p99 {p99}")  # fmt: skip
            bar.update(task, completed=min(stats["t"], scenario.duration_s), stats=text)

        play = player.run(on_second)
        bar.update(task, completed=scenario.duration_s)
    return play
