"""A synthetic deployment of many nodes, and a load generator that signs their heartbeats and
publishes them into the routers' heartbeat stream on the bus (for ``bench_cluster.py``).

    python loadtest/cluster_heartbeats.py --keys FILE --nodes-file nodes.yaml \\
        --bus nats://127.0.0.1:4222 --duration 30 [--part 0/1] [--source loadgen-0]

**The deployment** (``synthetic_deployment``): the sample (``zones/``, copied with its
geodata) with ``count`` nodes: copies of the sample's 18 at jittered positions (the first
copy of each keeps its id, so the sample's policies still name nodes that exist; the others are
``s00018`` ...), each with its own addresses, and a key for every node made by ``router keys
generate`` (``node-keys.yaml``, mode 0600; ``health.keys`` points at it). It is synthetic: the
sample's client map and policies, 20,000 nodes of the sample's kinds and capacities.

**The generator** (``main``): a process that plays its share of the nodes (``--part I/P``:
every P-th node from the I-th), each reporting once per ``--interval`` (1 s), spread evenly
over the interval: every 5 ms it signs and publishes the heartbeats due. Each is the node's
own datagram (format 3, docs/heartbeat.md: ``RH3``, the id, the routers' ids, a MAC for
each router made with the node's key for it, compact JSON; format 2 without
``--router-ids``), published with core NATS on ``router.heartbeat.<source>`` with the header ``Nats-Msg-Id: <node>:<boot>:<seq>``: the bytes a router republishes for a
heartbeat it verified (router/cluster/bus.py), so the routers consume and verify them as they
would their peers'. Core publish, no ack per message (what the routers do too); the stream
stores what reaches it. The generator never verifies anything itself.

It prints ``GENERATOR READY`` once connected, and at the end (``--duration``, or SIGTERM) one
JSON line: heartbeats published, seconds, its own CPU seconds, the rate achieved, and how far
behind its schedule it fell at worst (``behind_max_ms``: a generator that cannot keep up falls
behind, it does not skip). ``HeartbeatLoad`` runs one or more generator processes and reads
their figures.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SUBJECT = "router.heartbeat"  # router/cluster/bus.py HEARTBEAT_SUBJECT
TICK_S = 0.005  # the generator publishes what is due every 5 ms
LOAD_SHARE = 0.2  # nodes report 20 % of their capacity (as router/simulator.py)
READY_LINE = "GENERATOR READY"
READY_TIMEOUT_S = 60.0
STOP_WAIT_S = 15.0

try:  # the C loader reads a 20,000-node file in a fraction of the pure-Python time
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader


# -- the synthetic deployment ------------------------------------------------------------------


def synthetic_deployment(root: Path, count: int, seed: int = 11) -> tuple[Path, Path]:
    """(zones directory, keys file): the sample with ``count`` nodes (module docstring)."""
    from tests.conftest import make_deployment

    zones = make_deployment(root)
    inventory = yaml.safe_load((zones / "nodes.yaml").read_text())
    base = inventory["nodes"]
    if count < len(base):
        raise ValueError(
            f"a synthetic deployment keeps the sample's {len(base)} nodes: not {count}"
        )
    rng = random.Random(seed)
    nodes = []
    for i in range(count):
        node = dict(base[i % len(base)])
        if i >= len(base):
            node["id"] = f"s{i:05d}"
            node["lat"] = round(node["lat"] + rng.uniform(-0.5, 0.5), 4)
            node["lon"] = round(node["lon"] + rng.uniform(-0.5, 0.5), 4)
            # Documentation and private ranges only: 10.x.y.z for the copies (up to 62,500).
            node["ipv4"] = f"10.{i // 250 % 250}.{i % 250}.{1 + i // 62500}"
            node["ipv6"] = f"2001:db8:ff:{i:x}::1"
        nodes.append(node)
    inventory["nodes"] = nodes
    (zones / "nodes.yaml").write_text(
        "# SYNTHETIC: loadtest/cluster_heartbeats.py, the sample's nodes copied\n"
        + yaml.safe_dump(inventory, sort_keys=False)
    )
    keys = zones / "node-keys.yaml"
    done = subprocess.run([sys.executable, "-m", "router.cli", "keys", "generate", "--zones", str(zones),
                           "--out", str(keys)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False, stdin=subprocess.DEVNULL)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            f"router keys generate failed ({done.returncode}): {done.stderr[-2000:]}"
        )
    settings = zones / "deployment.yaml"
    text = settings.read_text()
    if "keys: node-keys.sample.yaml" not in text:
        raise RuntimeError(f"{settings}: no health.keys line to point at {keys.name}")
    settings.write_text(
        text.replace("keys: node-keys.sample.yaml", f"keys: {keys.name}  # synthetic")
    )
    (zones / "node-keys.sample.yaml").unlink()  # its keys are the sample's, for 18 nodes only
    return zones, keys


def read_nodes(keys_file: Path, nodes_file: Path) -> list[tuple[str, bytes, float]]:
    """(node id, its signing key, the load it reports in Gbps) of every node of
    ``nodes_file``; a node in key rotation signs with its next key, as the simulator does."""
    entries = yaml.load(keys_file.read_text(), Loader=_Loader)["keys"]
    inventory = yaml.load(nodes_file.read_text(), Loader=_Loader)["nodes"]
    out = []
    for node in inventory:
        entry = entries[node["id"]]
        key = entry if isinstance(entry, str) else entry.get("next", entry["current"])
        out.append(
            (node["id"], bytes.fromhex(key), round(float(node["capacity_gbps"]) * LOAD_SHARE, 3))
        )
    return out


# -- the generator process ---------------------------------------------------------------------


@dataclass
class _Node:
    node_id: str
    head: bytes  # "RH2" | len | id, or "RH3" | len | id | the routers' ids
    macs: list  # hmac objects keyed with the node's key (format 2) or its router keys (format 3)
    load: str  # load_gbps as JSON text
    seq: int = 0


def _nodes(entries: list[tuple[str, bytes, float]], routers: tuple[str, ...] = ()) -> list[_Node]:
    from router.config.node_keys import router_key

    out = []
    for node_id, key, load in entries:
        raw = node_id.encode()
        if routers:
            head = b"".join([b"RH3", bytes([len(raw)]), raw, bytes([len(routers)])]
                            + [bytes([len(r)]) + r.encode() for r in routers])  # fmt: skip
            macs = [hmac.new(router_key(key, r), digestmod=hashlib.sha256) for r in routers]
        else:
            head, macs = b"RH2" + bytes([len(raw)]) + raw, [hmac.new(key, digestmod=hashlib.sha256)]
        out.append(_Node(node_id, head, macs, json.dumps(load)))
    return out


def packet(node: _Node, boot: str, ts: float, power: str = "mains") -> bytes:
    """The node's next heartbeat: format 2 (or 3, a MAC for each router), compact JSON (the
    router's encoder's layout: router/health/telemetry.py)."""
    node.seq += 1
    payload = (
        f'{{"v":2,"node":"{node.node_id}","boot":"{boot}","seq":{node.seq},"ts":{ts!r},'
        f'"power":"{power}","uplinks":{{"uplink1":"up","uplink2":"up"}},"load_gbps":{node.load},'
        f'"rps":0.0,"rtt":[]}}'
    ).encode()
    signed = []
    for keyed in node.macs:
        mac = keyed.copy()
        mac.update(node.head)
        mac.update(payload)
        signed.append(mac.digest())
    if len(node.macs) == 1 and node.head.startswith(b"RH2"):
        return node.head + signed[0] + payload
    return node.head + b"".join(m[:16] for m in signed) + payload


async def generate(servers: list[str], source: str, nodes: list[_Node], interval_s: float, duration_s: float,
                   stop: asyncio.Event) -> dict:  # fmt: skip
    import nats

    nc = await nats.connect(servers=servers, name=f"heartbeat load {source}", connect_timeout=5,
                            max_reconnect_attempts=-1, reconnect_time_wait=0.5)  # fmt: skip
    subject = f"{SUBJECT}.{source}"
    boot = secrets.token_hex(16)  # one boot for all the generator's nodes: each has its own seq
    print(READY_LINE, flush=True)
    gap = interval_s / max(1, len(nodes))
    started = time.monotonic()
    cpu_started = time.process_time()
    deadline = started + duration_s
    due = started  # when the next heartbeat is due
    turn = 0
    sent = 0
    behind_max = 0.0
    publish = nc.publish
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            behind_max = max(behind_max, now - due)
            ts = time.time()
            while due <= now:
                node = nodes[turn]
                turn = (turn + 1) % len(nodes)
                data = packet(node, boot, ts)
                await publish(
                    subject, data, headers={"Nats-Msg-Id": f"{node.node_id}:{boot}:{node.seq}"}
                )
                sent += 1
                due += gap
            await asyncio.sleep(max(0.0, min(TICK_S, due - time.monotonic())))
        await nc.flush(timeout=10)
    finally:
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu_started
        await nc.close()
    return {"source": source, "nodes": len(nodes), "sent": sent, "seconds": round(elapsed, 3),
            "cpu_s": round(cpu, 3), "rate_per_s": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
            "cores": round(cpu / elapsed, 3) if elapsed > 0 else 0.0,
            "behind_max_ms": round(behind_max * 1000.0, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", required=True, type=Path, help="the node keys file")
    parser.add_argument(
        "--nodes-file", required=True, type=Path, help="the deployment's nodes.yaml"
    )
    parser.add_argument("--bus", required=True, help="NATS URLs, comma-separated")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between a node's heartbeats"
    )
    parser.add_argument(
        "--part", default="0/1", help="I/P: every P-th node from the I-th (default 0/1)"
    )
    parser.add_argument("--source", default="loadgen-0", help="the subject's last token")
    parser.add_argument("--router-ids", default="",
                        help="sign format 3 for these routers (comma-separated), as the nodes of a bus do")  # fmt: skip
    args = parser.parse_args(argv)
    index, parts = (int(v) for v in args.part.split("/"))
    if not 0 <= index < parts:
        parser.error("--part I/P needs 0 <= I < P")
    routers = tuple(r for r in args.router_ids.split(",") if r)
    nodes = _nodes(read_nodes(args.keys, args.nodes_file)[index::parts], routers)
    if not nodes:
        parser.error("no node in this part")

    async def run() -> dict:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        return await generate(
            args.bus.split(","), args.source, nodes, args.interval, args.duration, stop
        )

    print(json.dumps(asyncio.run(run())), flush=True)
    return 0


# -- the bench's side: generator processes ------------------------------------------------------


@dataclass
class HeartbeatLoad:
    """``processes`` generator processes sharing the nodes of ``nodes_file`` (each its own
    part and subject), publishing to ``servers`` for at most ``duration_s``."""

    keys: Path
    nodes_file: Path
    servers: list[str]
    duration_s: float
    processes: int = 1
    interval_s: float = 1.0
    router_ids: tuple[str, ...] = ()  # sign format 3 for these (the lab's routers)
    procs: list[subprocess.Popen] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    _lines: list[list[str]] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.processes):
            command = [sys.executable, str(Path(__file__).resolve()), "--keys", str(self.keys), "--nodes-file",
                       str(self.nodes_file), "--bus", ",".join(self.servers), "--duration", str(self.duration_s),
                       "--interval", str(self.interval_s), "--part", f"{i}/{self.processes}",
                       "--source", f"loadgen-{i}", "--router-ids", ",".join(self.router_ids)]  # fmt: skip
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip
            self.procs.append(process)
            lines: list[str] = []
            self._lines.append(lines)
            threading.Thread(target=self._drain, args=(process, lines), daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(READY_LINE in lines for lines in self._lines):
            dead = [p for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"heartbeat generator not ready: {self.stderr_tail()}")
            time.sleep(0.05)

    @staticmethod
    def _drain(process: subprocess.Popen, lines: list[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.strip())

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> list[dict]:
        """Stop every generator (SIGTERM by PID, then SIGKILL after a bound); their figures."""
        for process in self.procs:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        for process in self.procs:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        time.sleep(0.1)  # the drain threads read the last line
        self.results = []
        for lines in self._lines:
            for line in reversed(lines):
                if line.startswith("{"):
                    self.results.append(json.loads(line))
                    break
        return self.results

    def stderr_tail(self) -> str:
        out = []
        for process in self.procs:
            if process.poll() is not None and process.stderr is not None:
                out.append(process.stderr.read()[-1500:])
        return " | ".join(out)


if __name__ == "__main__":
    sys.exit(main())
