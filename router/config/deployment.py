"""Loading a whole deployment directory: the one code path behind ``check`` and ``serve``.

A deployment directory holds:

- ``deployment.yaml``: where the client map sources and the latency table are (paths
  relative to this file), and where the compiled client map is cached;
- ``nodes.yaml``: the node inventory (``router.config.nodes``);
- ``<zone>.zone``: RFC 1035 zone files, each served with its file name as origin;
- ``<zone>.policy.yaml``: steering policies for names of that zone;
- ``admin_state`` (optional): gdnsd-style admin overrides of nodes (``router.config.admin_state``).

Every file is validated and every problem collected before anything is returned, so
a broken directory never produces a half-loaded deployment.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.name
import dns.zone
from pydantic import BaseModel, ConfigDict, Field, field_validator

from router._gc import collector_paused
from router.config._validate import validate_item
from router.config._yaml import LocatedYaml, YamlPath, load_yaml
from router.config.admin_state import ADMIN_STATE_FILE, parse_admin_state
from router.config.dnssec_keys import DnssecKey, DnssecSettings, load_keys
from router.config.health import HealthConfig
from router.config.latency import RttSample, load_country_rtt, load_rtt_samples
from router.config.mapcoverage import CoverageSettings
from router.config.node_keys import read_router
from router.config.nodes import Inventory, parse_inventory
from router.config.onnet import check_onnet_reach
from router.config.policy import Policy, SteeredName, parse_policies
from router.config.problems import ConfigError, Problem
from router.config.secrets import is_sample_key, load_cookie_secrets, loose_permissions
from router.config.zones import parse_zone, zone_origin
from router.geo.cache import load_client_map
from router.geo.clientmap import ClientMap, ClientMapError, SourceProblem
from router.geo.importers import SOURCE_KINDS, Source

DEPLOYMENT_FILE = "deployment.yaml"
NODES_FILE = "nodes.yaml"
POLICY_SUFFIX = ".policy.yaml"
DEFAULT_CACHE_DIR = "../var/cache"  # relative to deployment.yaml; /var/ is not versioned


class ClientMapSource(BaseModel):
    """One entry of a ``client_map:`` list: its kind as the key, e.g. ``{czf: ops/zones.json}``.

    ``asn`` and ``country`` (czf and dczf only) apply to every coverage zone of the file.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mmdb: str | None = None
    czf: str | None = None
    dczf: str | None = None
    csv: str | None = None
    asn: int | None = Field(default=None, ge=0, le=0xFFFFFFFF)
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")


class RrlConfig(BaseModel):
    """``rrl:`` of deployment.yaml: response rate limiting (router/dns/rrl.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: int = Field(default=200, ge=0, le=1_000_000)  # responses/s per prefix and class; 0: off
    slip: int = Field(default=2, ge=0, le=100)  # every slip-th limited reply goes out truncated
    ipv4_prefix: int = Field(default=24, ge=8, le=32)
    ipv6_prefix: int = Field(default=56, ge=16, le=128)
    allow: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])  # never limited

    @field_validator("allow")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                ipaddress.ip_network(text, strict=True)
            except ValueError as exc:
                raise ValueError(f"{text!r}: not a prefix ({exc})") from None
        return value


class CookieConfig(BaseModel):
    """``cookies:`` of deployment.yaml: DNS cookies (RFC 7873, RFC 9018; router/dns/cookies.py).

    ``secret_file``: the secret every instance of the service shares, so each accepts the
    cookies the others made (router/config/secrets.py: load_cookie_secrets). Without it each
    router process makes its own random secret at start: right for a single instance; with
    several behind one anycast address a client that moves gets a fresh cookie (a normal
    answer, but not the rate-limit exemption until its next query)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    secret_file: str | None = None  # relative to deployment.yaml; a secret (mode 0600)


class DeploymentSettings(BaseModel):
    """``deployment.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_map: str | list[Any]  # one path, or a list of ClientMapSource mappings
    latency: str
    rtt_samples: str | None = (
        None  # node-to-prefix RTT measurements (prefix,node,rtt_ms,measured_at)
    )
    state_file: str | None = None  # node state kept across restarts (relative to this file)
    # DNS addresses, HOST:PORT ([V6]:PORT), when router serve is given no --listen; read at
    # start (a change takes a restart: the sockets are bound once).
    listen: list[str] | None = None
    rrl: RrlConfig = Field(default_factory=RrlConfig)
    cookies: CookieConfig = Field(default_factory=CookieConfig)
    cache_dir: str | None = None  # compiled client map cache (default DEFAULT_CACHE_DIR)
    health: HealthConfig | None = None
    coverage: CoverageSettings | None = None  # announced prefixes for router check --coverage
    dnssec: DnssecSettings | None = None  # signing (router/config/dnssec_keys.py)

    @field_validator("listen")
    @classmethod
    def _addresses(cls, value: list[str] | None) -> list[str] | None:
        for text in value or ():
            _check_address(text)
        if value is not None and len(set(value)) != len(value):
            raise ValueError("an address is listed twice")
        return value

    @field_validator("client_map", mode="before")
    @classmethod
    def _path_or_list(cls, value: Any) -> Any:
        if not isinstance(value, (str, list)):
            raise ValueError(
                f"must be a file path or a list of sources ({', '.join(k + ':' for k in SOURCE_KINDS)})"
            )
        return value


@dataclass(frozen=True)
class Deployment:
    """A validated deployment, ready to compile."""

    directory: Path
    inventory: Inventory
    zones: dict[dns.name.Name, dns.zone.Zone]
    policies: dict[tuple[dns.name.Name, str], Policy]  # (zone, policy name) -> policy
    steered: tuple[SteeredName, ...]
    client_map: ClientMap
    country_rtt: dict[tuple[str, str], float]
    health: HealthConfig | None = None
    node_keys: dict[str, tuple[bytes, ...]] | None = None
    # The router the keys were derived for (``router keys derive``), or None: the nodes' own.
    node_keys_router: str | None = None
    state_file: Path | None = None
    listen: tuple[str, ...] = ()
    rrl: RrlConfig = field(default_factory=RrlConfig)
    cookies: CookieConfig = field(default_factory=CookieConfig)
    cookie_secrets: tuple[bytes, ...] = ()  # from cookies.secret_file: current, then previous
    rtt_samples: tuple[RttSample, ...] = ()
    # The admin_state file: node id -> "up" | "down" | "drain" (empty without the file).
    admin_state: dict[str, str] = field(default_factory=dict)
    coverage: CoverageSettings | None = None  # read by router check --coverage only
    dnssec: DnssecSettings | None = None  # None: the zones are served unsigned
    dnssec_keys: tuple[DnssecKey, ...] = ()


def _check_address(text: str) -> None:
    """``HOST:PORT`` with an IP address for HOST (IPv6 in brackets), or ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r}: not HOST:PORT (IPv6 as [2001:db8::53]:53)")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    if address.version == 6 and not bracketed:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, [{host}]:{port}")


def _display(path: Path) -> str:
    """A path as the operator would write it: ``zones/../geodata/x`` becomes ``geodata/x``."""
    return os.path.normpath(path)


def _no_such_file(setting: str, path: Path) -> str:
    return f"{setting}: no such file {_display(path)} (paths are relative to {DEPLOYMENT_FILE})"


def load_deployment(directory: Path, keys_file: Path | None = None) -> Deployment:
    """Load and validate everything in ``directory``; raise ConfigError listing all problems.
    ``keys_file``: the node keys file to use instead of the one ``health.keys`` names."""
    with collector_paused():
        return _load_deployment(directory, keys_file)


def _load_deployment(directory: Path, keys_file: Path | None) -> Deployment:
    problems: list[Problem] = []
    settings: DeploymentSettings | None = None
    if not directory.is_dir():
        raise ConfigError([Problem(str(directory), 0, "not a directory")])

    settings_path = directory / DEPLOYMENT_FILE
    client_map = None
    country_rtt: dict[tuple[str, str], float] = {}
    settings_doc, errors = load_yaml(settings_path, str(settings_path))
    problems += errors
    if settings_doc is not None:
        validated, errors = validate_item(
            DeploymentSettings, settings_doc.data, settings_doc, (), DEPLOYMENT_FILE
        )
        problems += errors
        settings = validated if isinstance(validated, DeploymentSettings) else None
        if settings is not None:
            client_map, errors = _load_client_map(directory, settings, settings_doc)
            problems += errors
            latency_path = directory / settings.latency
            if not latency_path.is_file():
                problems.append(
                    settings_doc.problem(("latency",), _no_such_file("latency", latency_path))
                )
            else:
                country_rtt, errors = load_country_rtt(latency_path, _display(latency_path))
                problems += errors

    nodes_path = directory / NODES_FILE
    inventory = None
    nodes_doc, errors = load_yaml(nodes_path, str(nodes_path))
    problems += errors
    if nodes_doc is not None:
        inventory, errors = parse_inventory(nodes_doc)
        problems += errors

    zones: dict[dns.name.Name, dns.zone.Zone] = {}
    zone_texts: dict[dns.name.Name, tuple[str, str]] = {}
    zone_files = sorted(directory.glob("*.zone"))
    if not zone_files:
        problems.append(Problem(str(directory), 0, "no *.zone files: nothing to serve"))
    for path in zone_files:
        zone, errors = parse_zone(path, str(path))
        problems += errors
        origin = zone_origin(path)
        zone_texts[origin] = (str(path), path.read_text(encoding="utf-8", errors="replace"))
        if zone is not None:
            zones[origin] = zone

    policies: dict[tuple[dns.name.Name, str], Policy] = {}
    steered: list[SteeredName] = []
    for path in sorted(directory.glob(f"*{POLICY_SUFFIX}")):
        display = str(path)
        origin = dns.name.from_text(path.name.removesuffix(POLICY_SUFFIX))
        if origin not in zone_texts:
            problems.append(
                Problem(
                    display,
                    1,
                    f"no zone file {origin.to_text(omit_final_dot=True)}.zone for this policy file",
                )
            )
            continue
        doc, errors = load_yaml(path, display)
        problems += errors
        if doc is None:
            continue
        zone_display, zone_text = zone_texts[origin]
        zone_policies, zone_steered, errors = parse_policies(
            doc, zones.get(origin), zone_display, zone_text, inventory
        )
        problems += errors
        if not errors and inventory is not None and client_map is not None:
            for name, policy in zone_policies.items():
                problems += check_onnet_reach(
                    doc, name, f'policy "{name}"', policy, inventory, client_map.groups
                )
        policies.update({(origin, name): policy for name, policy in zone_policies.items()})
        steered += zone_steered

    node_keys = None
    node_keys_router = None
    if settings is not None and settings.health is not None and settings_doc is not None:
        keys_path = keys_file or directory / settings.health.keys
        if not keys_path.is_file():
            setting = "--keys" if keys_file else "health.keys"
            problems.append(
                settings_doc.problem(("health", "keys"), _no_such_file(setting, keys_path))
            )
        else:
            node_keys, errors = load_node_keys(keys_path, _display(keys_path), inventory)
            node_keys_router = keys_router(keys_path)
            problems += errors

    rtt_samples: list[RttSample] = []
    if settings is not None and settings_doc is not None and settings.rtt_samples:
        samples_path = directory / settings.rtt_samples
        if not samples_path.is_file():
            problems.append(
                settings_doc.problem(("rtt_samples",), _no_such_file("rtt_samples", samples_path))
            )
        elif inventory is not None:
            rtt_samples, errors = load_rtt_samples(
                samples_path, _display(samples_path), {n.id for n in inventory.nodes}
            )
            problems += errors

    if settings is not None and settings_doc is not None and settings.coverage is not None:
        announced_path = directory / settings.coverage.announced
        if not announced_path.is_file():
            problems.append(settings_doc.problem(
                ("coverage", "announced"), _no_such_file("coverage.announced", announced_path)
            ))  # fmt: skip

    cookie_secrets: tuple[bytes, ...] = ()
    if settings is not None and settings_doc is not None and settings.cookies.secret_file:
        secret_path = directory / settings.cookies.secret_file
        if not secret_path.is_file():
            problems.append(
                settings_doc.problem(
                    ("cookies", "secret_file"), _no_such_file("cookies.secret_file", secret_path)
                )
            )
        else:
            cookie_secrets, errors = load_cookie_secrets(secret_path, _display(secret_path))
            problems += errors

    dnssec_keys: tuple[DnssecKey, ...] = ()
    if settings is not None and settings.dnssec is not None:
        dnssec_keys, errors = load_keys(directory / settings.dnssec.keys, set(zones))
        problems += errors

    admin_state: dict[str, str] = {}
    admin_path = directory / ADMIN_STATE_FILE
    if admin_path.exists():
        node_ids = [n.id for n in inventory.nodes] if inventory is not None else None
        admin_state, errors = parse_admin_state(admin_path, str(admin_path), node_ids)
        problems += errors

    if problems:
        raise ConfigError(problems)
    assert inventory is not None and client_map is not None and settings is not None
    return Deployment(
        directory=directory,
        inventory=inventory,
        zones=zones,
        policies=policies,
        steered=tuple(steered),
        client_map=client_map,
        country_rtt=country_rtt,
        health=settings.health,
        node_keys=node_keys,
        node_keys_router=node_keys_router,
        state_file=directory / settings.state_file if settings.state_file else None,
        listen=tuple(settings.listen or ()),
        rrl=settings.rrl,
        cookies=settings.cookies,
        cookie_secrets=cookie_secrets,
        rtt_samples=tuple(rtt_samples),
        admin_state=admin_state,
        coverage=settings.coverage,
        dnssec=settings.dnssec,
        dnssec_keys=dnssec_keys,
    )


def _client_map_sources(
    directory: Path, settings: DeploymentSettings, doc: LocatedYaml
) -> tuple[list[tuple[Source, YamlPath, str]], list[Problem]]:
    """Each source with where deployment.yaml names it: (source, yaml path, label)."""
    sources: list[tuple[Source, YamlPath, str]] = []
    problems: list[Problem] = []

    def add(
        kind: str | None,
        relative: str,
        where: YamlPath,
        label: str,
        asn: int = 0,
        country: str = "",
    ) -> None:
        path = directory / relative
        if not path.is_file():
            problems.append(doc.problem(where, _no_such_file(label, path)))
            return
        try:
            source = (
                Source(kind, path, asn, country, _display(path))
                if kind
                else Source.from_path(path, _display(path))
            )
        except ClientMapError as exc:
            problems.extend(_client_map_problem(p, doc, where, label) for p in exc.problems)
            return
        sources.append((source, where, label))

    if isinstance(settings.client_map, str):
        add(None, settings.client_map, ("client_map",), "client_map")
        return sources, problems
    if not settings.client_map:
        problems.append(
            doc.problem(("client_map",), "client_map: the list is empty: name at least one source")
        )
    for i, item in enumerate(settings.client_map):
        label = f"client_map[{i}]"
        entry, errors = validate_item(ClientMapSource, item, doc, ("client_map", i), label)
        problems += errors
        if not isinstance(entry, ClientMapSource):
            continue
        kinds = [kind for kind in SOURCE_KINDS if getattr(entry, kind) is not None]
        if len(kinds) != 1:
            problems.append(
                doc.problem(
                    ("client_map", i),
                    f"{label}: give exactly one of {', '.join(SOURCE_KINDS)} (the kind of file, then its path)",
                )
            )
        elif (entry.asn is not None or entry.country is not None) and kinds[0] not in (
            "czf",
            "dczf",
        ):
            problems.append(
                doc.problem(
                    ("client_map", i),
                    f"{label}: asn and country apply to czf and dczf sources only",
                )
            )
        else:
            kind = kinds[0]
            add(
                kind,
                getattr(entry, kind),
                ("client_map", i, kind),
                label,
                entry.asn or 0,
                entry.country or "",
            )
    return sources, problems


def _load_client_map(
    directory: Path, settings: DeploymentSettings, doc: LocatedYaml
) -> tuple[ClientMap | None, list[Problem]]:
    """Every source read and merged (or the cached result); problems located in their files."""
    sources, problems = _client_map_sources(directory, settings, doc)
    if problems or not sources:
        return None, problems
    try:
        loaded = load_client_map(
            [s for s, _, _ in sources], directory / (settings.cache_dir or DEFAULT_CACHE_DIR)
        )
    except ClientMapError as exc:
        named = {source.name: (where, label) for source, where, label in sources}
        return None, [
            _client_map_problem(p, doc, *named.get(p.path, (("client_map",), "client_map")))
            for p in exc.problems
        ]
    return loaded.client_map, []


def _client_map_problem(
    problem: SourceProblem, doc: LocatedYaml, where: YamlPath, label: str
) -> Problem:
    """A problem with a line stays in its file; one without points at deployment.yaml."""
    if problem.line:
        return Problem(problem.path, problem.line, problem.message)
    return doc.problem(where, f"{label}: {problem.path}: {problem.message}")


def load_node_keys(
    path: Path, display: str, inventory: Inventory | None
) -> tuple[dict[str, tuple[bytes, ...]], list[Problem]]:
    """The heartbeat keys file: ``keys: {node id: hex key}``, 16+ bytes each; a node in key
    rotation has ``{current: hex, next: hex}`` and either key is accepted. A file with any key
    that is not a published sample key is a secret: readable by its owner only. A file made by
    ``router keys derive`` also says ``router: ID``: its keys are the nodes' keys for that
    router only (``keys_router``)."""
    doc, problems = load_yaml(path, display)
    if doc is None:
        return {}, problems
    data = doc.data
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("keys"), dict)
        or not set(data) <= {"keys", "router"}
        or not isinstance(data.get("router", ""), str)
    ):
        return {}, problems + [
            doc.problem(
                (), "must be a mapping keys: {node id: hex key} (and router: ID, if derived)"
            )
        ]
    node_ids = {n.id for n in inventory.nodes} if inventory else set()
    keys: dict[str, tuple[bytes, ...]] = {}
    for node_id, entry in data["keys"].items():
        where: YamlPath = ("keys", node_id)
        if inventory is not None and node_id not in node_ids:
            problems.append(
                doc.problem(where, f'key for unknown node "{node_id}" (not in nodes.yaml)')
            )
            continue
        if isinstance(entry, dict):
            if set(entry) - {"current", "next"} or "current" not in entry:
                problems.append(
                    doc.problem(
                        where,
                        f'node "{node_id}": in rotation a node has {{current: hex, next: hex}}, '
                        f"not {sorted(map(str, entry))}",
                    )
                )
                continue
            texts = [(where + ("current",), entry["current"])]
            if "next" in entry:
                texts.append((where + ("next",), entry["next"]))
        else:
            texts = [(where, entry)]
        node_keys = []
        for at, text in texts:
            try:
                key = bytes.fromhex(str(text))
            except ValueError:
                problems.append(doc.problem(at, f'node "{node_id}": key must be hexadecimal'))
                continue
            if len(key) < 16:
                problems.append(
                    doc.problem(
                        at, f'node "{node_id}": key must be at least 16 bytes (32 hex digits)'
                    )
                )
                continue
            node_keys.append(key)
        if len(node_keys) == len(texts):
            keys[str(node_id)] = tuple(node_keys)
    for node_id in sorted(node_ids - set(keys) - {str(k) for k in data["keys"]}):
        problems.append(
            doc.problem(("keys",), f'node "{node_id}" has no key: it could never report')
        )
    if not all(is_sample_key(k) for node_keys in keys.values() for k in node_keys):
        loose = loose_permissions(path)
        if loose:
            problems.append(Problem(display, 0, loose))
    return keys, problems


def keys_router(path: Path) -> str | None:
    """The ``router:`` of a keys file made by ``router keys derive`` (None: the nodes' own)."""
    return read_router(path)


def uses_sample_keys(keys: dict[str, tuple[bytes, ...]]) -> bool:
    """Whether any node key is one of the published samples (so: public)."""
    return any(is_sample_key(k) for node_keys in keys.values() for k in node_keys)
