"""DNSSEC keys: the ``dnssec:`` section of deployment.yaml and the key files it names.

Each key is one YAML file (written 0600 by ``router dnssec keygen``) in the directory
``dnssec.keys`` names::

    zone: cdn.example.
    role: csk            # csk (signs everything), ksk (the DNSKEY set) or zsk (the rest)
    algorithm: 13        # 13: ECDSA P-256 / SHA-256; 15: Ed25519
    publish: 2026-12-07T10:00:00Z    # its DNSKEY is in the zone from then
    activate: 2026-12-07T10:00:00Z   # it signs from then
    inactive: null                   # it stops signing then (a rollover sets it)
    delete: null                     # its DNSKEY leaves the zone then
    private_key: |
      -----BEGIN PRIVATE KEY-----
      ...

Every router instance of a service reads the same files, and ECDSA signatures are made
deterministic (RFC 6979), so every instance gives byte-identical signed answers.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pydantic import BaseModel, ConfigDict, Field, model_validator

with warnings.catch_warnings():
    # dnspython's DSA support warns on import; no key here is DSA (13 and 15 only).
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    import dns.dnssec

from router.config._validate import validate_item
from router.config._yaml import load_yaml
from router.config.problems import ConfigError, Problem
from router.config.secrets import loose_permissions, write_secret_file
from router.config.zones import zone_origin

ECDSAP256SHA256 = 13
ED25519 = 15
ALGORITHMS = {ECDSAP256SHA256: "ECDSAP256SHA256", ED25519: "ED25519"}
ROLE_FLAGS = {"csk": 257, "ksk": 257, "zsk": 256}  # 257: the SEP bit (RFC 4034 2.1.1)
KEY_SUFFIX = ".key.yaml"
DEFAULT_KEYS_DIR = "dnssec-keys"


class DnssecSettings(BaseModel):
    """``dnssec:`` of deployment.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: str = DEFAULT_KEYS_DIR  # directory of key files, relative to deployment.yaml
    # Signatures are valid this long from their (back-dated) inception; they are made again
    # when less than ``resign_before_days`` remain, so a resolver that cached a signature
    # for its TTL never holds an expired one.
    signature_validity_days: float = Field(default=14.0, ge=1.0, le=90.0)
    resign_before_days: float = Field(default=5.0, gt=0.0)
    # Inception this far in the past: validators whose clocks are slow still accept.
    inception_backdate_s: int = Field(default=3600, ge=0, le=86400)
    # Expiry spread over this share of the validity, by content, so re-signing does not come
    # in one burst (RFC 6781 4.4.2).
    expiry_jitter: float = Field(default=0.1, ge=0.0, le=0.5)
    # The parent's DS records (zone-file lines) for ``router check``: keys without one warn.
    parent_ds: str | None = None

    @model_validator(mode="after")
    def _resign_inside_validity(self) -> DnssecSettings:
        if self.resign_before_days >= self.signature_validity_days * (1 - self.expiry_jitter):
            raise ValueError(
                "resign_before_days must be less than signature_validity_days (less its jitter)"
            )
        return self


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    zone: str
    role: Literal["csk", "ksk", "zsk"] = "csk"
    algorithm: Literal[13, 15] = ECDSAP256SHA256
    publish: dt.datetime
    activate: dt.datetime
    inactive: dt.datetime | None = None
    delete: dt.datetime | None = None
    private_key: str

    @model_validator(mode="after")
    def _order(self) -> KeyFile:
        times = [self.publish, self.activate, self.inactive, self.delete]
        for t in times:
            if t is not None and t.tzinfo is None:
                raise ValueError(
                    "times need a zone: write them in UTC with a Z, e.g. 2026-12-07T10:00:00Z"
                )
        if self.activate < self.publish:
            raise ValueError("activate is before publish: a key signs only once its DNSKEY is out")
        if self.inactive is not None and self.inactive < self.activate:
            raise ValueError("inactive is before activate")
        if self.delete is not None and self.delete < (self.inactive or self.activate):
            raise ValueError("delete is before the key stops signing (inactive)")
        return self


@dataclass(frozen=True)
class DnssecKey:
    """One key of one zone, loaded."""

    path: Path
    zone: dns.name.Name
    role: str  # csk | ksk | zsk
    algorithm: int
    publish: float  # unix times; inf: never
    activate: float
    inactive: float
    delete: float
    private_key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    dnskey: dns.rdtypes.ANY.DNSKEY.DNSKEY
    key_tag: int

    def published(self, now: float) -> bool:
        return self.publish <= now < self.delete

    def signs(self, now: float) -> bool:
        return self.activate <= now < self.inactive

    def signs_keys(self) -> bool:
        return self.role in ("csk", "ksk")

    def signs_data(self) -> bool:
        return self.role in ("csk", "zsk")


def _unix(value: dt.datetime | None) -> float:
    return float("inf") if value is None else value.timestamp()


def _iso(value: float) -> str | None:
    if value == float("inf"):
        return None
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_dnskey(private_key, algorithm: int, role: str) -> dns.rdtypes.ANY.DNSKEY.DNSKEY:  # noqa: ANN001
    return dns.dnssec.make_dnskey(private_key.public_key(), algorithm, flags=ROLE_FLAGS[role])


def load_key_file(path: Path, served: set[dns.name.Name]) -> tuple[DnssecKey | None, list[Problem]]:
    """One key file; ``served``: the zones of the deployment (a key for another is a problem)."""
    display = os.path.normpath(path)
    try:
        loose = loose_permissions(path)
    except OSError as exc:
        return None, [Problem(display, 0, f"cannot read: {exc.strerror or exc}")]
    if loose:
        return None, [Problem(display, 0, loose)]
    doc, problems = load_yaml(path, display)
    if doc is None:
        return None, problems
    entry, problems = validate_item(KeyFile, doc.data, doc, (), "DNSSEC key")
    if not isinstance(entry, KeyFile):
        return None, problems
    try:
        zone = dns.name.from_text(entry.zone)
    except dns.exception.DNSException as exc:
        return None, [doc.problem(("zone",), f"zone: {entry.zone!r} is not a domain name ({exc})")]
    if zone not in served:
        return None, [
            doc.problem(
                ("zone",), f"zone: {zone} is not served here (no {zone.to_text(True)}.zone)"
            )
        ]
    try:
        private_key = serialization.load_pem_private_key(entry.private_key.encode(), password=None)
    except (ValueError, TypeError) as exc:
        return None, [
            doc.problem(
                ("private_key",), f"private_key: not an unencrypted PEM private key ({exc})"
            )
        ]
    wanted = (
        ec.EllipticCurvePrivateKey
        if entry.algorithm == ECDSAP256SHA256
        else ed25519.Ed25519PrivateKey
    )
    if not isinstance(private_key, wanted) or (
        entry.algorithm == ECDSAP256SHA256 and private_key.curve.name != "secp256r1"
    ):
        return None, [doc.problem(("private_key",),
                                  f"private_key: not a {ALGORITHMS[entry.algorithm]} key (algorithm {entry.algorithm})")]  # fmt: skip
    dnskey = make_dnskey(private_key, entry.algorithm, entry.role)
    key = DnssecKey(path, zone, entry.role, entry.algorithm, _unix(entry.publish), _unix(entry.activate),
                    _unix(entry.inactive), _unix(entry.delete), private_key, dnskey, dns.dnssec.key_id(dnskey))  # fmt: skip
    return key, []


def load_keys(
    directory: Path, served: set[dns.name.Name]
) -> tuple[tuple[DnssecKey, ...], list[Problem]]:
    """Every ``*.key.yaml`` of ``directory``; a zone with keys must have one that can sign
    each kind of data (keys and the rest) at some time, and key tags must differ per zone."""
    if not directory.is_dir():
        return (), [Problem(os.path.normpath(directory), 0,
                            "dnssec.keys: no such directory (make keys with router dnssec keygen --zones DIR)")]  # fmt: skip
    keys: list[DnssecKey] = []
    problems: list[Problem] = []
    for path in sorted(directory.glob(f"*{KEY_SUFFIX}")):
        key, errors = load_key_file(path, served)
        problems += errors
        if key is not None:
            keys.append(key)
    by_zone: dict[dns.name.Name, list[DnssecKey]] = {}
    for key in keys:
        by_zone.setdefault(key.zone, []).append(key)
    for zone, zone_keys in by_zone.items():
        tags = [k.key_tag for k in zone_keys]
        for key in zone_keys:
            if tags.count(key.key_tag) > 1:
                problems.append(Problem(os.path.normpath(key.path), 0,
                                        f"key tag {key.key_tag} is used by another key of {zone}: make a new key"))  # fmt: skip
        if not any(k.signs_keys() for k in zone_keys) or not any(k.signs_data() for k in zone_keys):
            problems.append(Problem(os.path.normpath(directory), 0,
                                    f"{zone}: needs a csk, or a ksk and a zsk (router dnssec keygen --zones DIR)"))  # fmt: skip
    if not keys and not problems:
        problems.append(
            Problem(os.path.normpath(directory), 0, "no *.key.yaml files: nothing to sign with")
        )
    return tuple(keys), problems


def key_file_name(zone: dns.name.Name, algorithm: int, key_tag: int) -> str:
    """BIND's K<zone>+<alg>+<tag> naming, so operators recognise the files."""
    return f"K{zone.to_text()}+{algorithm:03d}+{key_tag:05d}{KEY_SUFFIX}"


def new_private_key(algorithm: int):  # noqa: ANN201
    if algorithm == ECDSAP256SHA256:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"algorithm {algorithm}: use 13 (ECDSA P-256) or 15 (Ed25519)")


def write_key(directory: Path, zone: dns.name.Name, role: str, algorithm: int, publish: float,
              activate: float, inactive: float = float("inf"), delete: float = float("inf"),
              private_key=None) -> Path:  # noqa: ANN001  # fmt: skip
    """Write one key file (mode 0600); a new private key unless one is given."""
    private_key = private_key or new_private_key(algorithm)
    dnskey = make_dnskey(private_key, algorithm, role)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    doc = {
        "zone": zone.to_text(),
        "role": role,
        "algorithm": algorithm,
        "publish": _iso(publish),
        "activate": _iso(activate),
        "inactive": _iso(inactive),
        "delete": _iso(delete),
        "private_key": pem,
    }
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, stat.S_IRWXU)
    path = directory / key_file_name(zone, algorithm, dns.dnssec.key_id(dnskey))
    header = (f"# DNSSEC {role.upper()} of {zone} ({ALGORITHMS[algorithm]}), key tag "
              f"{dns.dnssec.key_id(dnskey)}: a secret. Written by router dnssec keygen.\n")  # fmt: skip
    write_secret_file(path, header + yaml.safe_dump(doc, sort_keys=False))
    return path


def schedule(path: Path, inactive: float | None = None, delete: float | None = None) -> None:
    """Set a key file's inactive and delete times (a rollover), keeping the rest."""
    text = path.read_text(encoding="utf-8")
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    doc = yaml.safe_load(text)
    if inactive is not None:
        doc["inactive"] = _iso(inactive)
    if delete is not None:
        doc["delete"] = _iso(delete)
    write_secret_file(path, header + yaml.safe_dump(doc, sort_keys=False))


def keys_directory(zones_dir: Path) -> tuple[Path, bool]:
    """Where the deployment keeps its keys, and whether deployment.yaml names them."""
    doc, problems = load_yaml(zones_dir / "deployment.yaml", str(zones_dir / "deployment.yaml"))
    if doc is None:
        raise ConfigError(problems)
    section = doc.data.get("dnssec") if isinstance(doc.data, dict) else None
    if isinstance(section, dict) and isinstance(section.get("keys"), str):
        return zones_dir / section["keys"], True
    return zones_dir / DEFAULT_KEYS_DIR, isinstance(section, dict)


def served_zones(zones_dir: Path) -> list[dns.name.Name]:
    return [zone_origin(path) for path in sorted(zones_dir.glob("*.zone"))]


def keygen(zones_dir: Path, algorithm: int = ECDSAP256SHA256, split: bool = False,
           now: float | None = None) -> tuple[list[Path], list[str]]:  # fmt: skip
    """A key for every zone of ``zones_dir`` that has none (a CSK, or a KSK and a ZSK with
    ``split``), active at once; deployment.yaml gets a ``dnssec:`` section naming them if it
    has none. Returns the files written and what was done (for the operator)."""
    now = time.time() if now is None else now
    directory, named = keys_directory(zones_dir)
    existing: set[dns.name.Name] = set()
    if directory.is_dir():
        for path in directory.glob(f"*{KEY_SUFFIX}"):
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and isinstance(doc.get("zone"), str):
                existing.add(dns.name.from_text(doc["zone"]))
    written, notes = [], []
    for zone in served_zones(zones_dir):
        if zone in existing:
            notes.append(f"{zone}: has keys already (kept)")
            continue
        for role in ("ksk", "zsk") if split else ("csk",):
            written.append(write_key(directory, zone, role, algorithm, now, now))
    if not named:
        with open(zones_dir / "deployment.yaml", "a", encoding="utf-8") as handle:
            handle.write(f"\n# DNSSEC: the zones are signed with the keys in this directory "
                         f"(router dnssec keygen).\ndnssec:\n  keys: {DEFAULT_KEYS_DIR}\n")  # fmt: skip
        notes.append(f"deployment.yaml: added dnssec: keys: {DEFAULT_KEYS_DIR}")
    return written, notes


def trust_anchor_text(zones_dir: Path, now: float | None = None) -> str:
    """Each zone's DS records (SHA-256) and DNSKEY set, in zone-file format, for the parent
    zone or a resolver's trust anchor: every published key that signs the DNSKEY set."""
    now = time.time() if now is None else now
    directory, _ = keys_directory(zones_dir)
    keys, problems = load_keys(directory, set(served_zones(zones_dir)))
    if problems:
        raise ConfigError(problems)
    lines = []
    for zone in sorted({k.zone for k in keys}):
        zone_keys = [k for k in keys if k.zone == zone and k.published(now)]
        lines.append(f"; {zone} -- DS for the parent zone (or a resolver's trust anchor)")
        for key in zone_keys:
            if key.signs_keys():
                ds = dns.dnssec.make_ds(zone, key.dnskey, "SHA256")
                lines.append(f"{zone.to_text()} 3600 IN DS {ds.to_text()}")
        lines.append(f"; {zone} -- its DNSKEY set")
        for key in zone_keys:
            lines.append(f"{zone.to_text()} 3600 IN DNSKEY {key.dnskey.to_text()}")
    return "\n".join(lines) + "\n"


PROPAGATION_S = 300  # a change reaches every instance and secondary within this (margin)
DEFAULT_PARENT_DS_TTL = 86400  # the parent's DS TTL (a day at most TLDs)


@dataclass(frozen=True)
class Rollover:
    """The schedule of one key rollover (pre-publication, RFC 6781 4.1.1 and RFC 7583 3.3)."""

    zone: dns.name.Name
    old: Path
    new: Path
    publish: float  # the new DNSKEY is published (the DNSKEY set is signed by both)
    switch: float  # the new key signs the data, the old stops
    remove: float  # the old DNSKEY leaves the zone
    signs_keys: bool  # a CSK or KSK: the parent's DS must follow

    def steps(self) -> list[str]:
        steps = [
            f"{_iso(self.publish)}: {self.zone} publishes the new key {self.new.name} beside the old one"
        ]
        if self.signs_keys:
            steps.append("now: give the parent the new DS (router dnssec trust-anchor --zones DIR), "
                         "keeping the old DS")  # fmt: skip
        steps.append(f"{_iso(self.switch)}: the new key signs, the old one stops")
        if self.signs_keys:
            steps.append(f"after {_iso(self.switch)}: remove the old DS from the parent")
        steps.append(f"{_iso(self.remove)}: the old key {self.old.name} leaves the zone")
        return steps


def rollover_waits(
    max_ttl: int, dnskey_ttl: int, parent_ds_ttl: int, signs_keys: bool
) -> tuple[float, float]:
    """(publish -> switch, switch -> remove), from the TTLs: a resolver may hold the old
    DNSKEY set (or, for a CSK or KSK, the old DS set) until the first wait is over, and data
    signed by the old key until the second is."""
    first = dnskey_ttl + PROPAGATION_S
    second = max_ttl + PROPAGATION_S
    if signs_keys:
        first = max(dnskey_ttl, parent_ds_ttl) + PROPAGATION_S
        second = max(max_ttl, parent_ds_ttl) + PROPAGATION_S
    return first, second


def rollover(zones_dir: Path, zone: dns.name.Name, max_ttl: int, dnskey_ttl: int,
             parent_ds_ttl: int = DEFAULT_PARENT_DS_TTL, now: float | None = None,
             key: str = "signing") -> Rollover:  # fmt: skip
    """Roll the data-signing key of ``zone`` (its CSK, or its ZSK), or with ``key="ksk"`` the
    KSK of split keys: a successor of the same role and algorithm published now, signing after
    the first wait; the old key retired then and removed after the second (``rollover_waits``).
    A KSK signs only the DNSKEY set, from its publication (every published KSK does), so its
    second wait is the DNSKEY TTL's, not the zone's largest. Key files are rewritten 0600."""
    now = time.time() if now is None else now
    directory, _ = keys_directory(zones_dir)
    keys, problems = load_keys(directory, set(served_zones(zones_dir)))
    if problems:
        raise ConfigError(problems)
    if key == "ksk":
        current = [k for k in keys if k.zone == zone and k.role == "ksk" and k.published(now)
                   and k.delete == float("inf")]  # fmt: skip
        what = "KSKs are published with no removal set"
        max_ttl = dnskey_ttl
    else:
        current = [k for k in keys if k.zone == zone and k.signs_data() and k.signs(now)
                   and k.inactive == float("inf")]  # fmt: skip
        what = "keys sign its data with no end set"
    if len(current) != 1:
        raise ValueError(f"{zone}: {len(current)} {what}; a rollover needs exactly one")
    old = current[0]
    first, second = rollover_waits(max_ttl, dnskey_ttl, parent_ds_ttl, old.signs_keys())
    switch, remove = now + first, now + first + second
    new = write_key(directory, zone, old.role, old.algorithm, now, now if key == "ksk" else switch)
    schedule(old.path, inactive=switch, delete=remove)
    return Rollover(zone, old.path, new, now, switch, remove, old.signs_keys())


def parse_parent_ds(path: Path) -> tuple[dict[dns.name.Name, list], list[Problem]]:
    """``dnssec.parent_ds``: DS records in zone-file lines (``name [ttl] [IN] DS ...``)."""
    display = os.path.normpath(path)
    out: dict[dns.name.Name, list] = {}
    problems = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [Problem(display, 0, f"cannot read: {exc}")]
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split(";", 1)[0].split()
        if not tokens:
            continue
        try:
            at = [t.upper() for t in tokens].index("DS")
            name = dns.name.from_text(tokens[0])
            rdata = dns.rdata.from_text(
                dns.rdataclass.IN, dns.rdatatype.DS, " ".join(tokens[at + 1 :])
            )
        except (ValueError, dns.exception.DNSException) as exc:
            problems.append(Problem(display, number, f"not a DS record ({exc})"))
            continue
        out.setdefault(name, []).append(rdata)
    return out, problems


def dnssec_warnings(zones: dict, keys: tuple[DnssecKey, ...], settings: DnssecSettings | None,
                    directory: Path, max_ttl: dict, now: float | None = None) -> list[str]:  # fmt: skip
    """What ``router check`` warns of: a time within a signature's validity when no key would
    sign a zone's data or keys (its signatures then run out), re-signing closer to expiry
    than a resolver may cache a signature, and, with ``dnssec.parent_ds``, keys that sign the
    DNSKEY set without a DS at the parent (or a DS matching no key)."""
    if settings is None:
        return []
    now = time.time() if now is None else now
    out = []
    validity = settings.signature_validity_days * 86400
    for zone in zones:
        zone_keys = [k for k in keys if k.zone == zone]
        if not zone_keys:
            continue
        edges = sorted(
            {now}
            | {t for k in zone_keys for t in (k.activate, k.inactive) if now < t < now + validity}
        )
        for kind, test in (("data", DnssecKey.signs_data), ("DNSKEY set", DnssecKey.signs_keys)):
            for t in edges:
                if not any(
                    test(k) and k.signs(t) and (kind == "data" or k.published(t)) for k in zone_keys
                ):
                    out.append(f"{zone}: from {_iso(t)} no key signs its {kind}: its signatures expire "
                               f"by {_iso(t + validity)} (make a successor: router dnssec rollover)")  # fmt: skip
                    break
        if settings.resign_before_days * 86400 < max_ttl.get(zone, 0):
            out.append(f"{zone}: dnssec.resign_before_days is shorter than its largest TTL "
                       f"({max_ttl[zone]} s): a resolver may cache a signature past its expiry")  # fmt: skip
    if settings.parent_ds:
        parent, problems = parse_parent_ds(directory / settings.parent_ds)
        out += [f"dnssec.parent_ds: {p}" for p in problems]
        for zone in zones:
            ds_set = parent.get(zone, [])
            zone_keys = [k for k in keys if k.zone == zone and k.signs_keys() and k.published(now)]
            matched = set()
            for key in zone_keys:
                hits = [ds for ds in ds_set if ds.key_tag == key.key_tag and ds.algorithm == key.algorithm and
                        ds == dns.dnssec.make_ds(zone, key.dnskey, ds.digest_type)]  # fmt: skip
                matched.update(id(ds) for ds in hits)
                if not hits:
                    out.append(f"{zone}: key {key.key_tag} ({key.path.name}) has no matching DS at the parent: "
                               "validators cannot reach it from the parent (router dnssec trust-anchor)")  # fmt: skip
            for ds in ds_set:
                if id(ds) not in matched:
                    out.append(f"{zone}: the parent's DS for key tag {ds.key_tag} matches no published key: "
                               "remove it from the parent")  # fmt: skip
    return out
