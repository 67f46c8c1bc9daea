"""``router keys generate``: the node heartbeat keys file, made and rotated.

Keys are 32 random bytes from ``secrets`` per node of ``nodes.yaml``. The file is written
0600 from its first byte (router/config/secrets.py). Existing keys are kept unless asked:

- default: nodes without a key get one; every other key stays as it is;
- ``force``: every node gets a new key (the old ones stop working at the next reload);
- ``rotate``: each chosen node gets a ``next`` key beside its ``current`` one, and the router
  accepts both; once the agents sign with the next key, ``promote`` makes it the current one
  and drops the old (docs/heartbeat.md, "Key rotation").
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from router.config._yaml import load_yaml
from router.config.nodes import parse_inventory
from router.config.problems import ConfigError, Problem
from router.config.secrets import is_sample_key, write_secret_file

KEY_BYTES = 32
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


def dump(entries: dict[str, dict[str, str]]) -> str:
    plain = {n: e["current"] if set(e) == {"current"} else e for n, e in entries.items()}
    return HEADER + yaml.safe_dump({"keys": plain}, sort_keys=False)


def write(path: Path, entries: dict[str, dict[str, str]]) -> None:
    write_secret_file(path, dump(entries))


def export_node_key(entries: dict[str, dict[str, str]], node: str) -> str:
    """The key a node agent signs with (its ``next`` key while rotating), as one hex line."""
    if node not in entries:
        raise KeyError(f"no key for node {node!r}")
    entry = entries[node]
    return entry.get("next", entry["current"]) + "\n"
