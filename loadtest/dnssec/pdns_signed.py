"""PowerDNS signing the steered sample zone online: the throughput bench's PowerDNS, secured.

The zone, its LUA A/AAAA records (``netmask()`` rules for every client-map block the query mix
touches) and the production settings are the throughput bench's own (``Peers.write_pdns``,
``pdns_settings("production")``); this module only adds DNSSEC, configured as PowerDNS's
documentation recommends for a bind-backend zone:

- BIND-mode operation: the keys in the bind backend's own SQLite database, ``bind-dnssec-db``,
  created with ``pdnsutil create-bind-db``, then ``pdnsutil secure-zone``
  (https://doc.powerdns.com/authoritative/dnssec/modes-of-operation.html#bind-mode-operation).
  ``secure-zone`` adds the NSEC ordering itself, and the bind backend computes it again
  whenever it loads the zone, so no separate ``rectify-zone`` is needed.
- One key, a CSK, ECDSAP256SHA256 (algorithm 13): ``default-ksk-algorithm=ecdsa256`` with
  ``default-zsk-algorithm`` empty, PowerDNS's defaults since 4.3 (settings.html
  #default-ksk-algorithm, #default-zsk-algorithm; written out here so the choice is visible).
- NSEC, not NSEC3: ``secure-zone``'s default (no ``set-nsec3``), like for like with the router.
- Online signing ("live" signing): every answer, the LUA ones included, is signed when it is
  asked for, and the signatures are "heavily cached" (modes-of-operation.html#signatures):
  the signature cache has no size bound by default (``max-signature-cache-entries`` unset), the
  keys are cached for ``dnssec-key-cache-ttl=30`` s and the zone's metadata for
  ``zone-metadata-cache-ttl=60`` s, and the packet cache (``cache-ttl``, 60 s in the
  production profile) keeps whole signed replies. All are left at their defaults. RRSIGs are
  valid for 3 weeks, from the most recent Thursday 00:00 UTC a week back.

Everything listens on 127.0.0.1 only; the server is stopped by PID (``Server.stop``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import dns.name

from loadtest import packages
from loadtest.throughput.answers import Oracle
from loadtest.throughput.peers import PACKAGES as PEER_PACKAGES
from loadtest.throughput.peers import Peers, deciding_block, on_a_free_port, tool_version
from loadtest.throughput.servers import START_TIMEOUT_S, Server, start_peer

PDNS_DOCS = "https://doc.powerdns.com/authoritative/"
PDNSUTIL_TIMEOUT_S = 60.0
ADDRESS = "127.0.0.1"

PACKAGES = {
    "pdns-server": PEER_PACKAGES["pdns-server"],
    "pdns-backend-bind": PEER_PACKAGES["pdns-backend-bind"],
}

# Added to the production profile's pdns.conf: setting -> (value, why, with the doc it follows).
SIGNING_SETTINGS = {
    "default-ksk-algorithm": ("ecdsa256", f"{PDNS_DOCS}settings.html#default-ksk-algorithm: the default, "
                                          "ECDSAP256SHA256 (algorithm 13)"),
    "default-zsk-algorithm": ("", f"{PDNS_DOCS}settings.html#default-zsk-algorithm: the default, empty: "
                                  "secure-zone makes one CSK, no separate ZSK"),
}  # fmt: skip


def ensure_packages() -> dict[str, str]:
    """Install PowerDNS and its bind backend if missing; a note per package still missing."""
    return packages.ensure(PACKAGES)


def sample_peers(zones: Path, subnets: list[str]) -> Peers:
    """The throughput bench's peer configuration for the deployment ``zones``, with LUA rules for
    the blocks ``subnets`` fall in (a subnet outside every rule gets the default answer)."""
    oracle = Oracle(zones)
    model = oracle.model
    origin = model.policies[model.steered[0][1]].zone
    return Peers(oracle, subnets, zones / f"{origin.to_text().rstrip('.')}.zone")


def expected_addresses(peers: Peers, policy: int, subnet: str) -> tuple[list[str], list[str]]:
    """(IPv4, IPv6) the LUA rules must answer ``subnet`` with for ``policy``: the router's own
    lookup (the bench's ``Oracle``) for the client group the subnet's block decides."""
    _, group = deciding_block(peers.oracle.model.client_map, subnet)
    oracle = peers.oracle
    return oracle.node_addresses(oracle.set_nodes(oracle.answer_set(policy, group)))


def pdnsutil(cfg: Path, *args: str) -> str:
    """Run ``pdnsutil`` on the configuration in ``cfg``; its output, or an error saying which
    command failed and what it printed."""
    argv = ["pdnsutil", f"--config-dir={cfg}", *args]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=PDNSUTIL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{' '.join(argv)}: no answer in {PDNSUTIL_TIMEOUT_S:g} s") from exc
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def write_signed_pdns(peers: Peers, cfg: Path, port: int, address: str = ADDRESS) -> dict:
    """The throughput bench's production PowerDNS in ``cfg`` (a new directory), its zone
    secured with a fresh ECDSAP256SHA256 CSK and NSEC. Returns the figures of ``write_pdns``
    with the signing settings added."""
    figures = peers.write_pdns(cfg, port, "production", address)
    database = cfg / "bind-dnssec.sqlite3"
    settings = {"bind-dnssec-db": (str(database), f"{PDNS_DOCS}dnssec/modes-of-operation.html"
                                                  "#bind-mode-operation: keys in the bind backend's database"),
                **SIGNING_SETTINGS}  # fmt: skip
    with (cfg / "pdns.conf").open("a") as conf:
        conf.writelines(f"{name}={value}\n" for name, (value, _why) in settings.items())
    pdnsutil(cfg, "create-bind-db", str(database))
    pdnsutil(cfg, "secure-zone", peers.zone)
    keys = pdnsutil(cfg, "show-zone", peers.zone)
    if "NSEC3" in keys or "algo = 13" not in keys or keys.count("(CSK)") != 1:
        raise RuntimeError(
            f"{peers.zone} was not secured with one algorithm-13 CSK and NSEC:\n{keys}"
        )
    figures["pdns_config"].update({k: v for k, (v, _) in settings.items()})
    figures["pdns_config_reasons"].update({k: why for k, (_, why) in settings.items()})
    return figures


def start_signed_pdns(
    peers: Peers, root: Path, binary: str | None = None, cpus: str | None = None,
    key: str = "pdns_signed", timeout: float = START_TIMEOUT_S,
) -> Server:  # fmt: skip
    """A signed PowerDNS (``write_signed_pdns``) on a free port of 127.0.0.1, its configuration
    and log under ``root``; returns once it answers the zone's SOA. ``server.extra`` holds the
    figures, ``config_dir`` and ``zone``."""
    binary = binary or packages.binary("pdns_server")
    if binary is None:
        raise RuntimeError("pdns_server is not installed (Debian package pdns-server)")
    cfg = root / key

    def start(port: int) -> Server:
        figures = write_signed_pdns(peers, cfg, port)
        server = start_peer(key, "PowerDNS (signed)", [binary, f"--config-dir={cfg}"], port, root / f"{key}.log",
                            cpus, {**figures, "config_dir": str(cfg), "zone": peers.zone}, peers.zone, timeout)  # fmt: skip
        server.version = (
            tool_version([binary, "--version"], r"PowerDNS Authoritative Server (\S+)") or ""
        )
        return server

    return on_a_free_port(ADDRESS, cfg, start)


def zone_records(server: Server, rdtype: str) -> list[str]:
    """The zone's ``DS`` (both digests PowerDNS exports: SHA-256 and SHA-384, from
    ``pdnsutil export-zone-ds``) or ``DNSKEY`` (from ``pdnsutil show-zone``) records as
    zone-file lines: a trust anchor for a validating resolver."""
    cfg, zone = Path(server.extra["config_dir"]), server.extra["zone"]
    if rdtype == "DS":
        text = pdnsutil(cfg, "export-zone-ds", zone)
    elif rdtype == "DNSKEY":
        text = pdnsutil(cfg, "show-zone", zone)
    else:
        raise ValueError(f"trust anchor type {rdtype!r}: DS or DNSKEY")
    origin = dns.name.from_text(zone)
    lines = []
    for line in text.splitlines():
        # "cdn.example. IN DS 61811 13 2 bb12... ; ( SHA256 digest )" or, in show-zone,
        # "CSK DNSKEY = cdn.example. IN DNSKEY 257 3 13 Rn0q... ; ( ECDSAP256SHA256 )"
        record = line.split(";", 1)[0].rsplit(" = ", 1)[-1].strip()
        fields = record.split()
        if (
            len(fields) > 3
            and fields[1:3] == ["IN", rdtype]
            and dns.name.from_text(fields[0]) == origin
        ):
            lines.append(record)
    if not lines:
        raise RuntimeError(f"pdnsutil gave no {rdtype} record for {zone}:\n{text}")
    return lines


def remove(server: Server) -> None:
    """Stop the server (by PID) and delete its configuration."""
    server.stop()
    shutil.rmtree(server.extra["config_dir"], ignore_errors=True)
