"""The files a deployment is made of: their hashes (the config's version) and a cheap
fingerprint the reload watcher polls.

The set is every file ``load_deployment`` reads: ``deployment.yaml``, ``nodes.yaml``, the
``*.zone`` and ``*.policy.yaml`` files, ``admin_state``, and the files deployment.yaml names
(keys, latency, client map sources, RTT samples). The state file is not part of it: the
router writes it itself.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from router.config.admin_state import ADMIN_STATE_FILE
from router.config.deployment import DEPLOYMENT_FILE, NODES_FILE, POLICY_SUFFIX

_REFERENCED_KEYS = ("latency", "rtt_samples")
_SOURCE_KINDS = ("mmdb", "czf", "dczf", "csv")


def config_paths(directory: Path) -> list[Path]:
    """The files of the deployment in ``directory`` (those that exist), sorted."""
    paths = {directory / DEPLOYMENT_FILE, directory / NODES_FILE, directory / ADMIN_STATE_FILE}
    paths.update(directory.glob("*.zone"))
    paths.update(directory.glob(f"*{POLICY_SUFFIX}"))
    paths.update(directory / name for name in _referenced(directory / DEPLOYMENT_FILE))
    return sorted(p for p in paths if p.is_file())


def _referenced(settings_path: Path) -> tuple[str, ...]:
    """Paths deployment.yaml names, best effort: a broken file names none (and fails the load).

    Parsed again only when the file changed: the reload watcher asks every second."""
    try:
        st = settings_path.stat()
    except OSError:
        return ()
    return _referenced_by_version(str(settings_path), st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _referenced_by_version(path: str, _inode: int, _size: int, _mtime_ns: int) -> tuple[str, ...]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return ()
    if not isinstance(data, dict):
        return ()
    names = [data.get(key) for key in _REFERENCED_KEYS]
    health = data.get("health")
    if isinstance(health, dict):
        names.append(health.get("keys"))
    client_map = data.get("client_map")
    if isinstance(client_map, list):
        names += [
            source.get(kind)
            for source in client_map
            if isinstance(source, dict)
            for kind in _SOURCE_KINDS
        ]
    else:
        names.append(client_map)
    return tuple(name for name in names if isinstance(name, str))


def fingerprint(directory: Path) -> tuple:
    """Changes whenever a config file is added, removed, replaced or written."""
    out = []
    for path in config_paths(directory):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


@dataclass(frozen=True)
class ConfigFiles:
    directory: Path
    hashes: dict[str, str]  # path relative to the directory -> sha256 hex

    @property
    def version(self) -> str:
        """A short hash over every file's name and content."""
        digest = hashlib.sha256()
        for name, value in sorted(self.hashes.items()):
            digest.update(f"{name}\0{value}\n".encode())
        return digest.hexdigest()[:16]

    @classmethod
    def read(cls, directory: Path) -> ConfigFiles:
        hashes = {}
        for path in config_paths(directory):
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
            except OSError:
                continue  # gone since listed: the load that follows reports it
            hashes[os.path.relpath(path, directory)] = digest.hexdigest()
        return cls(directory, hashes)
