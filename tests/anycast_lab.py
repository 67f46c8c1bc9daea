"""A BGP lab on loopback: BIRD 2 (the route collector) peering with ExaBGP, which runs the
router's anycast announcer as its process. Used by tests/test_router_anycast.py and by
script/anycast-lab.

Everything stays in one private directory and on loopback: BIRD runs with its own config,
control socket and pid file (``bird -f -c CONF -s SOCKET -P PIDFILE``) and has no kernel
protocol, so it never installs a route into the machine's tables; it never reads /etc/bird
nor talks to a system BIRD. ExaBGP connects from ``exabgp_address`` to BIRD's port, which is
passive; BIRD imports everything from it and exports nothing.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIRD_ASN = 64512
EXABGP_ASN = 64513


class LabUnavailable(Exception):
    """BIRD or ExaBGP is missing and cannot be installed here."""


def _run_quiet(args: list[str], timeout: float) -> bool:
    try:
        return subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout, check=False).returncode == 0  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_bird(install: bool = True) -> tuple[str, str]:
    """Paths of ``bird`` and ``birdc`` (Debian package bird2), installing it as root if missing."""

    def lookup() -> tuple[str, str] | None:
        path = os.pathsep.join(
            [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"]
        )
        bird, birdc = shutil.which("bird", path=path), shutil.which("birdc", path=path)
        return (bird, birdc) if bird and birdc else None

    found = lookup()
    if found is None and install and os.geteuid() == 0 and shutil.which("apt-get"):
        env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
        install_cmd = [*env_prefix, "apt-get", "install", "-y", "-qq", "bird2"]
        if not _run_quiet(install_cmd, 600):
            _run_quiet(["apt-get", "update", "-qq"], 600)
            _run_quiet(install_cmd, 600)
        found = lookup()
    if found is None:
        raise LabUnavailable(
            "BIRD 2 (Debian package bird2) is not installed and cannot be installed (need root and apt-get)"
        )
    return found


def find_exabgp(python: str = sys.executable, install: bool = True) -> list[str]:
    """The command that runs ExaBGP from ``python``'s environment, pip-installing it if missing."""
    command = [python, "-m", "exabgp"]
    if _run_quiet([python, "-c", "import exabgp"], 60):
        return command
    if install and _run_quiet(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "exabgp"], 600
    ):
        if _run_quiet([python, "-c", "import exabgp"], 60):
            return command
    raise LabUnavailable(
        f"ExaBGP is not installed in {python}'s environment and pip could not install it"
    )


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


def parse_birdc_routes(text: str) -> dict[str, str]:
    """``birdc show route all`` output -> {prefix: BGP next hop} (BGP routes only)."""
    routes: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        head = re.match(r"^(\S+/\d+)\s", line)
        if head:
            current = head.group(1)
            continue
        hop = re.match(r"^\s+BGP\.next_hop:\s+(\S+)", line)
        if hop and current is not None:
            routes[current] = hop.group(1)
    return routes


@dataclass
class AnycastLab:
    """BIRD and ExaBGP in ``workdir``; ExaBGP runs ``announcer_argv`` as its process."""

    workdir: Path
    announcer_argv: list[str]
    bird_address: str = "127.0.0.1"
    exabgp_address: str = "127.0.0.2"
    bird_port: int = 0
    python: str = sys.executable
    install: bool = True
    bird: subprocess.Popen | None = field(default=None, init=False)
    exabgp: subprocess.Popen | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bird_bin, self.birdc_bin = find_bird(self.install)
        self.exabgp_cmd = find_exabgp(self.python, self.install)
        if self.bird_port == 0:
            self.bird_port = free_port(self.bird_address)
        self.bird_port6 = free_port6()
        self.socket_path = self.workdir / "bird.ctl"
        self.bird_conf = self.workdir / "bird.conf"
        self.exabgp_conf = self.workdir / "exabgp.conf"
        self.announcer_script = self.workdir / "announcer.sh"
        self.bird_log = self.workdir / "bird.log"
        self.exabgp_log = self.workdir / "exabgp.log"

    # -- configuration ------------------------------------------------------------------

    def write_configs(self) -> None:
        self.bird_conf.write_text(
            f"""# generated by tests/anycast_lab.py: a route collector for the announcer, nothing else.
# No kernel protocol: routes learnt here never reach the machine's routing tables.
router id {self.bird_address};
protocol device {{ scan time 10; }}
protocol bgp exabgp {{
  local {self.bird_address} port {self.bird_port} as {BIRD_ASN};
  neighbor {self.exabgp_address} as {EXABGP_ASN};
  passive on;
  multihop;           # loopback peers are not on a shared subnet BIRD would call direct
  hold time 30;
  ipv4 {{ import all; export none; }};
}}
protocol bgp exabgp6 {{     # IPv6 routes on their own session over ::1, so next-hop self is IPv6
  local ::1 port {self.bird_port6} as {BIRD_ASN};
  neighbor ::1 as {EXABGP_ASN};
  passive on;
  multihop;
  hold time 30;
  ipv6 {{ import all; export none; }};
}}
"""
        )
        self.announcer_script.write_text(
            "#!/bin/sh\n# generated by tests/anycast_lab.py: the process ExaBGP runs\n"
            f"cd {shlex.quote(str(REPO))}\n"
            f"PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}} exec "
            + " ".join(shlex.quote(a) for a in self.announcer_argv)
            + "\n"
        )
        self.announcer_script.chmod(0o755)
        self.exabgp_conf.write_text(
            f"""# generated by tests/anycast_lab.py
process announcer {{
  run {self.announcer_script};
  encoder text;
}}
neighbor {self.bird_address} {{
  router-id {self.exabgp_address};
  local-address {self.exabgp_address};
  local-as {EXABGP_ASN};
  peer-as {BIRD_ASN};
  connect {self.bird_port};
  passive false;
  hold-time 30;
  family {{ ipv4 unicast; }}
  api {{ processes [ announcer ]; }}
}}
neighbor ::1 {{
  router-id {self.exabgp_address};
  local-address ::1;
  local-as {EXABGP_ASN};
  peer-as {BIRD_ASN};
  connect {self.bird_port6};
  passive false;
  hold-time 30;
  family {{ ipv6 unicast; }}
  api {{ processes [ announcer ]; }}
}}
"""
        )

    def exabgp_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "exabgp.daemon.user": getpass.getuser(),  # stay who we are; never drop to "nobody"
            "exabgp.daemon.drop": "false",
            "exabgp.daemon.daemonize": "false",
            "exabgp.tcp.bind": "",  # do not listen: ExaBGP only connects out to BIRD
            "exabgp.api.ack": "false",
            "exabgp.api.cli": "false",  # no control FIFOs under /run
            "exabgp.log.destination": "stdout",
            "exabgp.log.level": "INFO",
        })  # fmt: skip
        # ExaBGP reads these as exabgp_section_option too; the dotted form is the documented one.
        env.update(
            {k.replace(".", "_"): v for k, v in list(env.items()) if k.startswith("exabgp.")}
        )
        return env

    # -- processes ----------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        self.write_configs()
        check = subprocess.run(
            [self.bird_bin, "-p", "-c", str(self.bird_conf)],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            raise LabUnavailable(f"bird rejects its config: {check.stderr.strip()}")
        with open(self.bird_log, "w") as log:
            self.bird = subprocess.Popen(
                [self.bird_bin, "-f", "-c", str(self.bird_conf), "-s", str(self.socket_path), "-P", str(self.workdir / "bird.pid")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.wait_for(
            lambda: self.birdc("show status") is not None, timeout, "BIRD's control socket"
        )
        with open(self.exabgp_log, "w") as log:
            self.exabgp = subprocess.Popen(
                [*self.exabgp_cmd, str(self.exabgp_conf)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=self.exabgp_env(), cwd=self.workdir,
            )  # fmt: skip
        self.wait_for(self.established, timeout, "the BGP sessions BIRD <- ExaBGP")

    def stop(self) -> None:
        """Stop ExaBGP (which stops the announcer) then BIRD, each by its PID."""
        for name in ("exabgp", "bird"):
            process = getattr(self, name)
            if process is None:
                continue
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)
            setattr(self, name, None)

    def __enter__(self) -> AnycastLab:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation --------------------------------------------------------------------

    def birdc(self, command: str) -> str | None:
        try:
            done = subprocess.run([self.birdc_bin, "-s", str(self.socket_path), *command.split()],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=5, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            return None
        return done.stdout if done.returncode == 0 else None

    def established(self) -> bool:
        """Both sessions up: IPv4 over 127.0.0.x, IPv6 over ::1."""
        return all(
            "Established" in (self.birdc(f"show protocols {name}") or "")
            for name in ("exabgp", "exabgp6")
        )

    def routes(self) -> dict[str, str]:
        """BIRD's tables: {prefix: BGP next hop} for every route learnt from ExaBGP."""
        return {
            **parse_birdc_routes(self.birdc("show route all protocol exabgp") or ""),
            **parse_birdc_routes(self.birdc("show route all protocol exabgp6") or ""),
        }

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in ("bird", "exabgp"):
                process = getattr(self, name)
                if process is not None and process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited ({process.returncode}) waiting for {what}\n{self.logs()}"
                    )
            if predicate():
                return
            time.sleep(0.2)
        raise TimeoutError(
            f"no {what} after {timeout:.0f} s; routes {self.routes()}\n{self.logs()}"
        )

    def logs(self) -> str:
        parts = []
        for path in (self.bird_log, self.exabgp_log):
            text = path.read_text(errors="replace") if path.exists() else "(none)"
            parts.append(f"--- {path.name} (last 4000 chars)\n{text[-4000:]}")
        return "\n".join(parts)


# -- by hand: script/anycast-lab ------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Start the lab and keep it up until Ctrl-C (see router/anycast/README.md)."""
    import argparse
    import secrets
    import tempfile

    parser = argparse.ArgumentParser(prog="script/anycast-lab", description=main.__doc__)
    parser.add_argument(
        "--api", help="announce for this running router's API (else start one on --zones)"
    )
    parser.add_argument(
        "--zones", type=Path, default=REPO / "zones", help="deployment for the router started here"
    )
    parser.add_argument(
        "--service-prefix",
        action="append",
        help="service prefix (repeatable; default 192.0.2.53/32)",
    )
    parser.add_argument(
        "--interval", default="1", help="announcer round interval in seconds (default 1)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=1179,
        help="BIRD's BGP port on 127.0.0.1 (default 1179; 0 picks one)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where configs, logs and the control socket go (default: a new temp dir)",
    )
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="anycast-lab-"))
    router = None
    api = args.api
    if api is None:
        token = os.environ.get("ROUTER_API_TOKEN") or secrets.token_hex(16)
        router = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "serve", "--zones", str(args.zones), "--listen", "127.0.0.1:0",
             "--api", "127.0.0.1:0", "--workers", "2", "--drain-grace", "2"],
            stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "ROUTER_API_TOKEN": token},
        )  # fmt: skip
        assert router.stdout is not None
        for line in router.stdout:
            found = re.match(r"READY dns=(\S+) api=(\S+)", line)
            if found:
                api = f"http://{found.group(2)}"
                print(f"router: DNS {found.group(1)}, API {api}, token {token}")
                break
        if api is None:
            router.wait()
            print("anycast-lab: the router did not start", file=sys.stderr)
            return 1
    prefixes = args.service_prefix or ["192.0.2.53/32"]
    argv_announcer = [
        sys.executable,
        "-m",
        "router.anycast.announcer",
        "--api",
        api,
        "--interval",
        args.interval,
    ]
    for prefix in prefixes:
        argv_announcer += ["--service-prefix", prefix]
    lab = AnycastLab(workdir, argv_announcer, bird_port=args.port)
    try:
        lab.start()
        print(f"lab up in {workdir} (BIRD {lab.bird_address}:{lab.bird_port} and [::1]:{lab.bird_port6} "
              f"AS{BIRD_ASN} <- ExaBGP {lab.exabgp_address} and ::1 AS{EXABGP_ASN})")  # fmt: skip
        print(f"  {lab.birdc_bin} -s {lab.socket_path} show route all")
        print(f"  tail -f {lab.exabgp_log}")
        print("Ctrl-C stops everything.", flush=True)
        last: dict[str, str] | None = None
        while True:
            routes = lab.routes()
            if routes != last:
                print(time.strftime("%H:%M:%S"), "BIRD has:", ", ".join(f"{p} via {h}" for p, h in sorted(routes.items())) or "nothing", flush=True)  # fmt: skip
                last = routes
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    except (LabUnavailable, RuntimeError, TimeoutError) as exc:
        print(f"anycast-lab: {exc}", file=sys.stderr)
        return 1
    finally:
        lab.stop()
        if router is not None:
            if router.poll() is None:
                os.kill(router.pid, signal.SIGTERM)
                router.wait(timeout=30)
            if router.stdout is not None:
                router.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
