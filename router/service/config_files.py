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
from router.config.dnssec_keys import DEFAULT_KEYS_DIR, KEY_SUFFIX

_REFERENCED_KEYS = ("latency", "rtt_samples")
_SOURCE_KINDS = ("mmdb", "czf", "dczf", "csv")


def config_paths(directory: Path, keys_file: Path | None = None) -> list[Path]:
    """The files of the deployment in ``directory`` (those that exist), sorted; ``keys_file``:
    the node keys file named on the command line instead of in deployment.yaml."""
    paths = {directory / DEPLOYMENT_FILE, directory / NODES_FILE, directory / ADMIN_STATE_FILE}
    paths.update(directory.glob("*.zone"))
    paths.update(directory.glob(f"*{POLICY_SUFFIX}"))
    paths.update(directory / name for name in _referenced(directory / DEPLOYMENT_FILE))
    paths.update(secret_paths(directory, keys_file))
    return sorted(p for p in paths if p.is_file())


def secret_paths(directory: Path, keys_file: Path | None = None) -> set[Path]:
    """The deployment's secret files: the node keys, named by ``health.keys`` or ``--keys``,
    the DNS cookie secrets (``cookies.secret_file``) and the DNSSEC keys (every key file in
    the directory ``dnssec.keys`` names: a key added or rescheduled is a change)."""
    named = _referenced(directory / DEPLOYMENT_FILE, "secrets") or ("",)
    paths = {directory / name for name in named[1:]}
    for keys_dir in _referenced(directory / DEPLOYMENT_FILE, "dnssec"):
        paths.update((directory / keys_dir).glob(f"*{KEY_SUFFIX}"))
    if keys_file is not None:
        paths.add(keys_file)
    elif named[0]:
        paths.add(directory / named[0])
    return paths


def _referenced(settings_path: Path, which: str = "files") -> tuple[str, ...]:
    """Paths deployment.yaml names (``which``: "files" for the public ones, "secrets" for the
    secret ones: the keys file or "", then the cookie secrets file if named), best effort: a
    broken file names none (and fails the load).

    Parsed again only when the file changed: the reload watcher asks every second."""
    try:
        st = settings_path.stat()
    except OSError:
        return ()
    files, keys, dnssec = _referenced_by_version(
        str(settings_path), st.st_ino, st.st_size, st.st_mtime_ns
    )
    return {"secrets": keys, "dnssec": dnssec}.get(which, files)


@functools.lru_cache(maxsize=16)
def _referenced_by_version(
    path: str, _inode: int, _size: int, _mtime_ns: int
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return (), (), ()
    if not isinstance(data, dict):
        return (), (), ()
    names = [data.get(key) for key in _REFERENCED_KEYS]
    health = data.get("health")
    keys = health.get("keys") if isinstance(health, dict) else None
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
    files = tuple(name for name in names if isinstance(name, str))
    cookies = data.get("cookies")
    cookie_file = cookies.get("secret_file") if isinstance(cookies, dict) else None
    secrets = (keys if isinstance(keys, str) else "",)
    dnssec = data.get("dnssec")
    keys_dir = dnssec.get("keys", DEFAULT_KEYS_DIR) if isinstance(dnssec, dict) else None
    dnssec_dirs = (keys_dir,) if isinstance(keys_dir, str) else ()
    return files, secrets + ((cookie_file,) if isinstance(cookie_file, str) else ()), dnssec_dirs


def fingerprint(directory: Path, keys_file: Path | None = None) -> tuple:
    """Changes whenever a config file is added, removed, replaced or written."""
    out = []
    for path in config_paths(directory, keys_file):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


SECRET_HASH = "secret: not shown"


@dataclass(frozen=True)
class ConfigFiles:
    """The hashes of a deployment's files. ``version`` (shown on the API and in metrics) leaves
    out the secret files, so that nothing public is a digest of the node keys; ``revision``
    covers them too and says whether anything at all changed (the reloader's test)."""

    directory: Path
    hashes: dict[str, str]  # path relative to the directory -> sha256 hex
    secret: frozenset[str] = frozenset()  # which of those are secret files

    @property
    def version(self) -> str:
        """A short hash over every public file's name and content."""
        return _digest((n, v) for n, v in self.hashes.items() if n not in self.secret)

    @property
    def revision(self) -> str:
        """A short hash over every file, the secret ones included: never shown."""
        return _digest(self.hashes.items())

    @property
    def public_hashes(self) -> dict[str, str]:
        return {n: SECRET_HASH if n in self.secret else v for n, v in self.hashes.items()}

    @classmethod
    def read(cls, directory: Path, keys_file: Path | None = None) -> ConfigFiles:
        hashes = {}
        secret = {os.path.relpath(p, directory) for p in secret_paths(directory, keys_file)}
        for path in config_paths(directory, keys_file):
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
            except OSError:
                continue  # gone since listed: the load that follows reports it
            hashes[os.path.relpath(path, directory)] = digest.hexdigest()
        return cls(directory, hashes, frozenset(secret))


def _digest(items) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(items):
        digest.update(f"{name}\0{value}\n".encode())
    return digest.hexdigest()[:16]
