"""The peers' Debian packages: found on the machine, or installed with apt-get when root.

Shared by the benchmarks that measure a peer (``bench_throughput.py``: dnsperf, gdnsd,
PowerDNS; ``bench_failover.py``: gdnsd). A package that cannot be had is never skipped in
silence: the caller gets a note saying why, and puts it in its figures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

Finder = Callable[[], str | None]


def existing(path: str) -> str | None:
    return path if Path(path).exists() else None


def binary(name: str) -> str | None:
    """``name`` on PATH or in /usr/sbin (Debian puts daemons there, often off a user's PATH)."""
    return shutil.which(name) or existing(f"/usr/sbin/{name}")


def can_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def ensure(packages: dict[str, Finder]) -> dict[str, str]:
    """Install (Debian) whatever of ``packages`` (name -> how to find what it installs) is
    missing: one ``apt-get update``, one ``apt-get install``. Returns a note per package
    still missing."""
    missing = [name for name, find in packages.items() if not find()]
    if not missing:
        return {}
    if not can_install():
        return {name: f"{name} not installed, and not root with apt-get" for name in missing}
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
    detail = ""
    try:
        subprocess.run(
            ["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300, check=False
        )
        done = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env,
                              capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
        detail = done.stderr.strip()[-300:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        detail = str(exc)
    return {
        name: f"apt-get install {name} failed: {detail}" for name in missing if not packages[name]()
    }
