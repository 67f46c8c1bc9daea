"""``router keys generate``: the node heartbeat keys file, made and rotated.

Keys are 32 random bytes from ``secrets`` per node of ``nodes.yaml``. The file is written
0600 from its first byte (router/config/secrets.py). Existing keys are kept unless asked:

- default: nodes without a key get one; every other key stays as it is;
- ``force``: every node gets a new key (the old ones stop working at the next reload);
- ``rotate``: each chosen node gets a ``next`` key beside its ``current`` one, and the router
  accepts both; once the agents sign with the next key, ``promote`` makes it the current one
  and drops the old (docs/heartbeat.md, "Key rotation").

``router keys derive``: from that file, the keys of one router of a bus (``derive``): each
node's key for that router (router/health/telemetry.py ``router_key``), the rotation kept. A
router holding these can check the format-3 MAC made for it and no other (docs/cluster.md,
"Node keys").
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from router.config._yaml import load_yaml
from router.config.nodes import parse_inventory
from router.config.problems import ConfigError, Problem
from router.config.secrets import is_sample_key, write_secret_file

KEY_BYTES = 32
DERIVED_HEADER = (
    "# Node heartbeat keys for router {router} only (HMAC-SHA256, hex): SECRET. Mode 0600.\n"
    "# Made by `router keys derive` from the nodes' keys; remake it after each rotation.\n"
)
HEADER = (
    "# Node heartbeat keys (HMAC-SHA256, hex): SECRET. Mode 0600, out of version control.\n"
    "# Made by `router keys generate`; a node in rotation has {current: ..., next: ...}.\n"
)


@dataclass
class KeysChange:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    rotating: list[str] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # keys of nodes no longer in nodes.yaml


def new_key() -> str:
    return secrets.token_hex(KEY_BYTES)


def node_ids(directory: Path) -> list[str]:
    """The node ids of ``directory``'s nodes.yaml; ConfigError if it does not validate."""
    path = directory / "nodes.yaml"
    doc, problems = load_yaml(path, str(path))
    if doc is None:
        raise ConfigError(problems)
    inventory, problems = parse_inventory(doc)
    if inventory is None or problems:
        raise ConfigError(problems)
    return [node.id for node in inventory.nodes]


def read_entries(path: Path) -> dict[str, dict[str, str]]:
    """The keys file as ``{node: {"current": hex[, "next": hex]}}`` (empty if there is none)."""
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError([Problem(str(path), 0, f"cannot read the keys file: {exc}")]) from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, dict):
        raise ConfigError([Problem(str(path), 0, "must be a mapping keys: {node id: hex key}")])
    entries = {}
    for node, entry in keys.items():
        if isinstance(entry, dict) and isinstance(entry.get("current"), str):
            entries[str(node)] = {k: str(v) for k, v in entry.items() if k in ("current", "next")}
        elif isinstance(entry, str):
            entries[str(node)] = {"current": entry}
        else:
            raise ConfigError([Problem(str(path), 0, f"node {node!r}: not a hex key")])
    return entries


def generate(
    entries: dict[str, dict[str, str]],
    nodes: list[str],
    *,
    force: bool = False,
    rotate: bool = False,
    promote: bool = False,
    only: set[str] | None = None,
) -> tuple[dict[str, dict[str, str]], KeysChange]:
    """The new entries for ``nodes`` (``only``: limit force/rotate/promote to these)."""
    change = KeysChange()
    out: dict[str, dict[str, str]] = {}
    for node in nodes:
        entry = dict(entries.get(node, {}))
        chosen = only is None or node in only
        sample = "current" in entry and is_sample_key(bytes.fromhex(entry["current"]))
        if not entry:
            entry = {"current": new_key()}
            change.added.append(node)
        elif chosen and (force or sample):
            entry = {"current": new_key()}  # a published sample key is never worth keeping
            change.replaced.append(node)
        elif chosen and promote and "next" in entry:
            entry = {"current": entry["next"]}
            change.promoted.append(node)
        elif chosen and rotate and "next" not in entry:
            entry["next"] = new_key()
            change.rotating.append(node)
        else:
            change.kept.append(node)
        out[node] = entry
    change.dropped = sorted(set(entries) - set(nodes))
    return out, change


def dump(entries: dict[str, dict[str, str]], router: str | None = None) -> str:
    plain = {n: e["current"] if set(e) == {"current"} else e for n, e in entries.items()}
    if router is None:
        return HEADER + yaml.safe_dump({"keys": plain}, sort_keys=False)
    return DERIVED_HEADER.format(router=router) + yaml.safe_dump(
        {"router": router, "keys": plain}, sort_keys=False
    )


def write(path: Path, entries: dict[str, dict[str, str]], router: str | None = None) -> None:
    write_secret_file(path, dump(entries, router))


def read_router(path: Path) -> str | None:
    """The ``router:`` of a derived keys file; None for the nodes' own keys (or no file)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    router = data.get("router") if isinstance(data, dict) else None
    return str(router) if router is not None else None


ROUTER_KEY_LABEL = b"router heartbeat key\x00"


def router_key(node_key: bytes, router_id: str) -> bytes:
    """The key of one node for one router: what that router holds (``router keys derive``)
    and what the node makes from its own key to sign format 3 (router/health/telemetry.py)."""
    return hmac.digest(node_key, ROUTER_KEY_LABEL + router_id.encode(), "sha256")


def derive(entries: dict[str, dict[str, str]], router: str) -> dict[str, dict[str, str]]:
    """Each node's keys (current, and next while rotating) for ``router``."""
    return {
        node: {slot: router_key(bytes.fromhex(key), router).hex() for slot, key in entry.items()}
        for node, entry in entries.items()
    }


def export_node_key(entries: dict[str, dict[str, str]], node: str) -> str:
    """The key a node agent signs with (its ``next`` key while rotating), as one hex line."""
    if node not in entries:
        raise KeyError(f"no key for node {node!r}")
    entry = entries[node]
    return entry.get("next", entry["current"]) + "\n"
