"""The peers: gdnsd and PowerDNS configured to steer like the router, and the packages.

- gdnsd 3 with its geoip plugin: one map and one resource per steered name, whose ``nets``
  file is the router's whole compiled client map, each block sent to a "datacenter" that
  stands for the node pair the router's routing table gives that block's client group;
  ``service_types => up`` (no health checks: they would probe the nodes' documentation
  addresses off loopback). gdnsd takes at most 254 datacenters per map: past that (a world
  of thousands of node pairs) the mix's pairs get one first and the other blocks keep their
  entry but point at the default pair (``gdnsd_datacenters``, counted).
- PowerDNS 4 (bind backend, LUA records, ``edns-subnet-processing``), tuned as its
  documentation recommends for production (``pdns_settings``): per steered name a ``LUA A``
  and a ``LUA AAAA`` record choosing the same node pair with ``netmask()`` for every
  client-map block the query mix touches.

dnsperf, gdnsd, pdns-server and pdns-backend-bind are installed with apt-get when missing
and running as root (``loadtest.packages``); a peer that cannot be had gets a note.
"""

from __future__ import annotations

import glob
import ipaddress
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.name

from loadtest import packages
from loadtest.throughput.answers import Oracle
from loadtest.throughput.servers import START_TIMEOUT_S, Server, free_port, start_peer

PORT_ATTEMPTS = 3  # a peer's start on a port taken meanwhile is tried on another

# gdnsd's nets may not name the IPv4-like subspaces of IPv6 (gdnsd-plugin-geoip(8)).
GDNSD_V6_REFUSED = [ipaddress.IPv6Network(n) for n in (
    "::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "2001::/32", "2002::/16",
)]  # fmt: skip

# gdnsd-plugin-geoip: "this code only supports up to 254" datacenters per map (a fatal error
# at start). The sample needs 14; a world of 20,000 nodes has thousands of distinct pairs.
GDNSD_MAX_DATACENTERS = 254

PACKAGES = {
    "dnsperf": lambda: shutil.which("dnsperf"),
    "gdnsd": lambda: packages.binary("gdnsd"),
    "pdns-server": lambda: packages.binary("pdns_server"),
    "pdns-backend-bind": lambda: next(iter(glob.glob("/usr/lib/*/pdns/libbindbackend.so")), None),
}


def ensure_packages() -> dict[str, str]:
    """Install whatever of dnsperf, gdnsd and PowerDNS is missing; a note per package still missing."""
    return packages.ensure(PACKAGES)


def tool_version(argv: list[str], pattern: str) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else None


def interval_cidrs(start: int, end: int, scope: int, bits: int) -> list[tuple[int, int]]:
    """A compiled-map interval as the aligned blocks of length ``scope`` it is made of."""
    size = 1 << (bits - scope)
    if start % size or (end + 1 - start) % size:
        raise ValueError(f"interval {start}-{end} is not made of /{scope} blocks")
    return [(a, scope) for a in range(start, end + 1, size)]


def map_blocks(client_map) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]]:  # noqa: ANN001
    """Every mapped block of the compiled client map as (network, client group)."""
    out = []
    for i in range(len(client_map.v4_start)):
        for address, plen in interval_cidrs(int(client_map.v4_start[i]), int(client_map.v4_end[i]),
                                            int(client_map.v4_scope[i]), 32):  # fmt: skip
            out.append((ipaddress.IPv4Network((address, plen)), int(client_map.v4_group[i])))
    for i in range(len(client_map.v6_start_hi)):
        start = (int(client_map.v6_start_hi[i]) << 64) | int(client_map.v6_start_lo[i])
        end = (int(client_map.v6_end_hi[i]) << 64) | int(client_map.v6_end_lo[i])
        for address, plen in interval_cidrs(start, end, int(client_map.v6_scope[i]), 128):
            out.append((ipaddress.IPv6Network((address, plen)), int(client_map.v6_group[i])))
    return out


def deciding_block(
    client_map, subnet: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]:  # noqa: ANN001
    """The client-map block (and its group) that decides for an ECS subnet: the block of length
    SCOPE holding the subnet's address, as the router looks it up."""
    network = ipaddress.ip_network(subnet)
    group, scope = client_map.lookup(network.network_address)
    return ipaddress.ip_network((network.network_address, scope), strict=False), group


@dataclass
class SteeredName:
    label: str  # relative to the zone
    policy: int
    ttl: int


def gdnsd_nets(blocks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]], dc_of_set: dict[int, str],
               set_of_group, default: str | None = None) -> tuple[list[str], int]:  # noqa: ANN001 # fmt: skip
    """``nets`` file lines (``NET => DC``); blocks in IPv6 subspaces gdnsd refuses are skipped.
    ``default``: the datacenter of an answer set without one of its own (else an error)."""
    lines, skipped = [], 0
    for network, group in blocks:
        if network.version == 6 and any(
            network.subnet_of(r) or r.subnet_of(network) for r in GDNSD_V6_REFUSED
        ):
            skipped += 1
            continue
        answer_set = set_of_group(group)
        dc = dc_of_set[answer_set] if default is None else dc_of_set.get(answer_set, default)
        lines.append(f"{network} => {dc}")
    return lines, skipped


def gdnsd_config_text(
    port: int, run_dir: Path, maps: dict[str, dict], address: str = "0.0.0.0"
) -> str:
    """gdnsd 3 config: one geoip map + resource per steered policy.

    ``maps``: resource name -> {"nets": path, "datacenters": [dc, ...] (default first),
    "dcmap": {dc: (v4 list, v6 list)}}. ``service_types => up``: no health checks (they would
    probe the documentation-prefix node addresses); every datacenter is up. ``listen`` is the
    IPv4 "ANY" address, gdnsd's own default (with ``::``) and what an anycast node runs: like the
    router it is measured beside, gdnsd then sends each UDP reply from the query's destination
    address (IP_PKTINFO). Cookies are on, gdnsd's default.
    """
    map_lines, resource_lines = [], []
    for name, spec in maps.items():
        dcs = ", ".join(spec["datacenters"])
        map_lines.append(
            f"      {name}_map => {{ datacenters => [ {dcs} ], nets => {spec['nets']} }}"
        )
        entries = []
        for dc, (v4, v6) in spec["dcmap"].items():
            entries.append(
                f"          {dc} => {{ addrs_v4 => [ {', '.join(v4)} ], addrs_v6 => [ {', '.join(v6)} ] }}"
            )
        resource_lines.append(f"      {name} => {{\n        map => {name}_map\n        dcmap => {{\n"
                              + "\n".join(entries) + "\n        }\n      }")  # fmt: skip
    return f"""options => {{
  listen => [ {address} ]
  dns_port => {port}
  udp_threads => 1
  tcp_threads => 1
  run_dir => {run_dir / "run"}
  state_dir => {run_dir / "state"}
}}
plugins => {{
  geoip => {{
    service_types => up
    maps => {{
{chr(10).join(map_lines)}
    }}
    resources => {{
{chr(10).join(resource_lines)}
    }}
  }}
}}
"""


def lua_list(items: list[str]) -> str:
    return "{" + ",".join(f"'{i}'" for i in items) + "}"


def pdns_lua(rules: list[tuple[list[str], list[str]]], default: list[str]) -> str:
    """A LUA record body: the first rule whose netmasks hold the client (``bestwho``, i.e. the
    ECS address when there is one) returns its addresses, else ``default``."""
    parts = []
    for i, (nets, addresses) in enumerate(rules):
        parts.append(
            f"{'if' if i == 0 else 'elseif'} netmask({lua_list(nets)}) then return {lua_list(addresses)}"
        )
    body = " ".join(parts) + (" end " if parts else "")
    return f";{body}return {lua_list(default)}"


def peer_zone_text(
    zone_text: str, steered: list[SteeredName], records: dict[str, list[str]]
) -> str:
    """The router's zone file plus one line per steered record (``records[label]``)."""
    lines = [
        zone_text.rstrip("\n"),
        "",
        "; steered names (generated by loadtest/bench_throughput.py)",
    ]
    for s in steered:
        lines += records[s.label]
    return "\n".join(lines) + "\n"


class Peers:
    """Configuration of gdnsd and PowerDNS equivalent to the router's steering."""

    def __init__(self, oracle: Oracle, subnets: list[str], zone_file: Path) -> None:
        self.oracle = oracle
        model = oracle.model
        origin = dns.name.from_text(zone_file.name.removesuffix(".zone"))
        self.zone = origin.to_text()
        self.zone_text = zone_file.read_text()
        self.steered = [SteeredName(name.relativize(origin).to_text(), policy, model.policies[policy].policy.ttl)
                        for name, policy in model.steered if name.is_subdomain(origin)]  # fmt: skip
        self.subnets = subnets
        self.default_set = {s.policy: oracle.answer_set(s.policy, 0) for s in self.steered}

    def _addresses(self, answer_set: int) -> tuple[list[str], list[str]]:
        return self.oracle.node_addresses(self.oracle.set_nodes(answer_set))

    def write_gdnsd(self, cfg: Path, port: int, address: str = "0.0.0.0") -> dict:
        (cfg / "zones").mkdir(parents=True)
        blocks = map_blocks(self.oracle.model.client_map)
        maps, records, figures = (
            {},
            {},
            {"gdnsd_nets_per_map": len(blocks), "gdnsd_nets_skipped": 0},
        )
        for s in self.steered:
            policy = s.policy
            order = self.gdnsd_datacenters(policy, blocks)
            figures["gdnsd_datacenters"] = max(figures.get("gdnsd_datacenters", 0), len(order))
            dc_of_set = {a: f"s{a}" for a in order}
            # An answer beyond gdnsd's datacenter limit: its blocks keep their entry (the map
            # stays the router's size) but point at the default pair, and are counted.
            substitutes = sum(self.oracle.answer_set(policy, g) not in dc_of_set for _, g in blocks)
            figures["gdnsd_nets_substituted"] = (
                figures.get("gdnsd_nets_substituted", 0) + substitutes
            )
            lines, skipped = gdnsd_nets(blocks, dc_of_set, lambda g, p=policy: self.oracle.answer_set(p, g),
                                        default=dc_of_set[order[0]])  # fmt: skip
            figures["gdnsd_nets_skipped"] += skipped
            figures["gdnsd_nets_entries"] = max(figures.get("gdnsd_nets_entries", 0), len(lines))
            nets = cfg / f"{s.label}.nets"
            nets.write_text("\n".join(lines) + "\n")
            maps[s.label] = {"nets": str(nets), "datacenters": [dc_of_set[a] for a in order],
                             "dcmap": {dc_of_set[a]: self._addresses(a) for a in order}}  # fmt: skip
            records[s.label] = [f"{s.label} {s.ttl} DYNA geoip!{s.label}"]
        (cfg / "config").write_text(gdnsd_config_text(port, cfg, maps, address))
        (cfg / "zones" / self.zone.rstrip(".")).write_text(
            peer_zone_text(self.zone_text, self.steered, records)
        )
        return figures

    def gdnsd_datacenters(self, policy: int, blocks: list) -> list[int]:
        """The answer sets that get a gdnsd datacenter, the default first: all of them when
        they fit gdnsd's limit; else the mix's subnets' sets, then the sets covering the most
        blocks, up to the limit."""
        default = self.default_set[policy]
        counts = Counter(self.oracle.answer_set(policy, g) for _, g in blocks)
        counts.pop(default, None)
        if len(counts) + 1 <= GDNSD_MAX_DATACENTERS:
            return [default, *sorted(counts)]
        mix = []
        for subnet in self.subnets:
            answer_set = self.oracle.answer_set(
                policy, deciding_block(self.oracle.model.client_map, subnet)[1]
            )
            if answer_set != default and answer_set not in mix:
                mix.append(answer_set)
        rest = [a for a, _ in counts.most_common() if a not in mix]
        return [default, *(mix + rest)[: GDNSD_MAX_DATACENTERS - 1]]

    def pdns_rules(self, policy: int) -> list[tuple[int, list[str]]]:
        """(answer set, netmasks) for every block our subnets fall in, the default set left out."""
        by_set: dict[int, set] = {}
        for subnet in self.subnets:
            block, group = deciding_block(self.oracle.model.client_map, subnet)
            answer_set = self.oracle.answer_set(policy, group)
            if answer_set != self.default_set[policy]:
                by_set.setdefault(answer_set, set()).add(block)
        out = []
        for answer_set in sorted(by_set):
            v4 = ipaddress.collapse_addresses(n for n in by_set[answer_set] if n.version == 4)
            v6 = ipaddress.collapse_addresses(n for n in by_set[answer_set] if n.version == 6)
            out.append((answer_set, [str(n) for n in [*v4, *v6]]))
        return out

    def write_pdns(
        self, cfg: Path, port: int, profile: str = "production", address: str = "0.0.0.0"
    ) -> dict:
        cfg.mkdir(parents=True)
        records, netmasks = {}, 0
        for s in self.steered:
            rules = self.pdns_rules(s.policy)
            netmasks = max(netmasks, sum(len(n) for _, n in rules))
            lines = []
            for family, qtype in ((0, "A"), (1, "AAAA")):
                code = pdns_lua([(nets, self._addresses(a)[family]) for a, nets in rules],
                                self._addresses(self.default_set[s.policy])[family])  # fmt: skip
                lines.append(f'{s.label} {s.ttl} IN LUA {qtype} "{code}"')
            records[s.label] = lines
        zone_path = cfg / f"{self.zone.rstrip('.')}.zone"
        zone_path.write_text(peer_zone_text(self.zone_text, self.steered, records))
        (cfg / "named.conf").write_text(
            f'options {{ directory "{cfg}"; }};\nzone "{self.zone.rstrip(".")}" {{ type master; file "{zone_path}"; }};\n'
        )
        settings = pdns_settings(profile, netmasks)
        (cfg / "pdns.conf").write_text("\n".join([
            "launch=bind", f"bind-config={cfg / 'named.conf'}", f"local-address={address}", f"local-port={port}",
            f"socket-dir={cfg}", "daemon=no", "guardian=no", "disable-syslog=yes", "webserver=no", "api=no",
            "primary=no", "secondary=no", "disable-axfr=yes", "security-poll-suffix=", "loglevel=4",
            *(f"{name}={value}" for name, (value, _why) in settings.items()), "",
        ]))  # fmt: skip
        return {"pdns_netmasks_per_record": netmasks, "pdns_config": {k: v for k, (v, _) in settings.items()},
                "pdns_config_reasons": {k: why for k, (_, why) in settings.items()}}  # fmt: skip


PDNS_DOCS = "https://doc.powerdns.com/authoritative/"
LUA_EXEC_LIMIT_DEFAULT = 1000  # lua-records-exec-limit's default (instructions per LUA record run)


def pdns_settings(profile: str, netmasks: int) -> dict[str, tuple[str, str]]:
    """PowerDNS's tuning for this workload: setting -> (value, why, with the doc it follows).

    ``production``: what the PowerDNS documentation recommends for a busy server on one core
    (performance.html, lua-records/index.html, settings.html); ``defaults``: PowerDNS's own
    defaults for the same (the previous configuration, kept to show what tuning buys). Both
    need ``enable-lua-records`` and ``edns-subnet-processing`` for LUA records to see the ECS
    address (``bestwho``)."""
    perf, lua, settings = (
        PDNS_DOCS + "performance.html",
        PDNS_DOCS + "lua-records/index.html",
        PDNS_DOCS + "settings.html",
    )
    # A LUA record is a chain of netmask() tests: about one Lua instruction per netmask listed
    # and a few per test; past the limit PowerDNS answers SERVFAIL. The default holds the
    # sample's records; a larger mix (or the world map) needs more.
    limit = max(LUA_EXEC_LIMIT_DEFAULT, 4 * netmasks + 500)
    common = {
        "enable-lua-records": ("yes", f"{lua}: LUA records must be enabled explicitly"),
        "edns-subnet-processing": ("yes", f"{settings}#edns-subnet-processing: ECS to the backend, "
                                          "so bestwho is the client subnet"),
        "lua-records-exec-limit": (str(limit), f"{settings}#lua-records-exec-limit (default 1000): "
                                              f"raised to fit the longest record ({netmasks} netmasks)"),
    }  # fmt: skip
    if profile == "defaults":
        return {
            **common,
            "enable-lua-records": ("yes", f"{lua}: the default model, a fresh Lua state per query"),
        }
    if profile != "production":
        raise ValueError(f"unknown PowerDNS profile {profile!r}: production or defaults")
    return {
        **common,
        "enable-lua-records": ("shared", f"{lua}#shared-lua-state-model: a Lua state per thread, reused "
                                         "(up to 10x QPS; our records keep no globals, so they cannot interfere)"),
        "receiver-threads": ("1", f"{perf}: a receiver thread per core with reuseport (the server has one core)"),
        "reuseport": ("yes", f"{perf}: with kernel >= 3.9 and a receiver per core"),
        "distributor-threads": ("1", f"{perf}: with 1 distributor PowerDNS runs unthreaded, which may be a lot "
                                     "faster; the bind backend is in memory, not latency bound"),
        "cache-ttl": ("60", f"{perf}: the 20 s default may be low for busy sites, 60 rarely leads to problems "
                            "(the packet cache keeps the answer's shortest TTL)"),
        "query-cache-ttl": ("20", f"{perf}: the defaults work fine for many sites (query cache)"),
        "negquery-cache-ttl": ("60", f"{perf}: the default; negative entries are most of the query cache's gain"),
        "bind-check-interval": ("0", f"{settings}#bind-check-interval: the default, no periodic zone file "
                                     "stat (zones are reloaded with pdns_control bind-reload-now)"),
        "log-dns-details": ("no", f"{perf}: logging kills performance; busy sites turn it off"),
    }  # fmt: skip


def start_gdnsd(
    peers: Peers, root: Path, binary: str, cpus: str | None, address: str = "0.0.0.0",
    timeout: float = START_TIMEOUT_S,
) -> Server:  # fmt: skip
    """gdnsd bound to ``address`` (the router's address in the same run)."""
    cfg = root / "gdnsd"

    def start(port: int) -> Server:
        figures = peers.write_gdnsd(cfg, port, address)
        return start_peer("gdnsd", "gdnsd", [binary, "-c", str(cfg), "start"], port, root / "gdnsd.log",
                          cpus, figures, peers.zone, timeout)  # fmt: skip

    return on_a_free_port(address, cfg, start)


def start_pdns(
    peers: Peers, root: Path, binary: str, cpus: str | None, profile: str = "production",
    address: str = "0.0.0.0", key: str = "pdns", timeout: float = START_TIMEOUT_S,
) -> Server:  # fmt: skip
    """PowerDNS with ``profile``'s settings (``pdns_settings``), bound to ``address`` (the
    router's address in the same run: like for like)."""
    cfg = root / key
    label = "PowerDNS" if profile == "production" else f"PowerDNS ({profile})"

    def start(port: int) -> Server:
        figures = peers.write_pdns(cfg, port, profile, address)
        return start_peer(key, label, [binary, f"--config-dir={cfg}"], port, root / f"{key}.log", cpus,
                          {**figures, "config_dir": str(cfg)}, peers.zone, timeout)  # fmt: skip

    return on_a_free_port(address, cfg, start)


def on_a_free_port(address: str, cfg: Path, start: Callable[[int], Server]) -> Server:
    """``start(port)`` on a free port of ``address``, again on another (with its config
    written afresh) if something took the port between the check and the bind: other
    servers start beside the bench (the test suite runs several at once)."""
    for attempt in range(PORT_ATTEMPTS):
        try:
            return start(free_port(address))
        except RuntimeError as exc:
            if "already in use" not in str(exc) or attempt == PORT_ATTEMPTS - 1:
                raise
            shutil.rmtree(cfg, ignore_errors=True)
    raise AssertionError("unreachable")


def pdns_stats(server: Server) -> dict:
    cfg = server.extra["config_dir"]
    try:
        done = subprocess.run(["pdns_control", f"--socket-dir={cfg}", f"--config-dir={cfg}", "show", "*"],
                              capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return {}
    stats = {}
    for item in done.stdout.strip().split(","):
        name, _, value = item.partition("=")
        if value.strip().lstrip("-").isdigit():
            stats[name.strip()] = int(value)
    return stats
