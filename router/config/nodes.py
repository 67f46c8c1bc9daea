"""The node inventory, ``nodes.yaml``: sites and the edge nodes placed in them.

Example::

    sites:
      - id: mad-tef-1          # a central office, exchange point or PoP
        metro: Madrid
        country: ES
        kind: isp              # isp (embedded in an access ISP) | ixp | pop
        lat: 40.42
        lon: -3.70
        serves: on-net         # optional: on-net (only the ISP's own clients) | any (default)
    nodes:
      - id: tef-mad-1
        asn: 3352              # the ISP the node sits in (on-net for its clients)
        site: mad-tef-1
        lat: 40.42
        lon: -3.70
        ipv4: 192.0.2.11
        ipv6: 2001:db8:11::1
        capacity_gbps: 400
        serves_asns: [6739]    # optional, on-net only: other client ASNs it may serve too

``serves`` and ``serves_asns`` may be set on a site (for all its nodes) or on a node (which
then overrides its site). An on-net-only node answers only clients whose ASN is the node's
own or in ``serves_asns`` (say, the ISP's customer cone): an ISP-embedded cache is usually
allowed to serve that ISP's customers and nobody else. Others, clients of unknown networks and
resolvers that send no ECS included, go to nodes that serve any client.
"""

from __future__ import annotations

import socket
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.config._validate import validate_all, validate_item
from router.config._yaml import LocatedYaml
from router.config.problems import Problem

ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"

Asn = Annotated[int, Field(ge=1, le=4_294_967_295)]
Serves = Literal["any", "on-net"]


def serves_of(node: Node, site: Site) -> Serves:
    """What ``node`` serves: its own ``serves``, else its site's, else any."""
    return node.serves or site.serves or "any"


def _check_serves(item: Site | Node) -> None:
    if item.serves == "any" and item.serves_asns:
        raise ValueError("serves_asns is for on-net-only nodes: it needs serves: on-net, not any")


class Site(BaseModel):
    """A place nodes live in: an ISP central office, an exchange point, or a CDN PoP."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=ID_PATTERN)
    metro: str = Field(min_length=1)
    country: str = Field(pattern=r"^[A-Z]{2}$")
    kind: Literal["isp", "ixp", "pop"]
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    # Which clients the nodes may answer (module docstring); None: not said here (a node
    # then takes its site's, and a site means any).
    serves: Serves | None = None
    serves_asns: tuple[Asn, ...] | None = None

    @model_validator(mode="after")
    def _serves(self) -> Site:
        _check_serves(self)
        return self


class Node(BaseModel):
    """One edge node (a cache cluster behind one pair of service addresses)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=ID_PATTERN)
    asn: int = Field(ge=1, le=4_294_967_295)
    site: str
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    ipv4: IPv4Address
    ipv6: IPv6Address
    capacity_gbps: float = Field(gt=0)
    # Prefixes announced over BGP with this node as next hop while it is up (optional).
    anycast_prefixes: tuple[IPv4Network | IPv6Network, ...] = ()
    # Probed by the router as a second signal: http://HOST:PORT/PATH (GET, 2xx = good) or
    # tcp://HOST:PORT (connect = good). Optional.
    health_url: str | None = Field(
        default=None, pattern=r"^(https?://[^\s/]+(/\S*)?|tcp://[^\s/]+:\d+)$"
    )
    # Which clients the nodes may answer (module docstring); None: not said here (a node
    # then takes its site's, and a site means any).
    serves: Serves | None = None
    serves_asns: tuple[Asn, ...] | None = None

    @model_validator(mode="after")
    def _serves(self) -> Node:
        _check_serves(self)
        return self


class Inventory(BaseModel):
    model_config = ConfigDict(frozen=True)

    sites: tuple[Site, ...]
    nodes: tuple[Node, ...]

    @cached_property
    def _sites_by_id(self) -> dict[str, Site]:
        return {s.id: s for s in self.sites}

    def site_of(self, node: Node) -> Site:
        # A dict, not a scan: called per node (20,000 nodes x 600 sites took seconds).
        return self._sites_by_id[node.site]

    def onnet_asns(self, node: Node) -> frozenset[int] | None:
        """The client ASNs ``node`` may answer if it is on-net only (its own ASN and its
        ``serves_asns``, the node's or else its site's); None when it serves any client."""
        site = self.site_of(node)
        if serves_of(node, site) == "any":
            return None
        extra = node.serves_asns if node.serves_asns is not None else site.serves_asns
        return frozenset((node.asn, *(extra or ())))

    @cached_property
    def served(self) -> dict[str, frozenset[int] | None]:
        """``onnet_asns`` of every node by id, worked out once (each policy checks them)."""
        return {node.id: self.onnet_asns(node) for node in self.nodes}


def parse_inventory(doc: LocatedYaml) -> tuple[Inventory | None, list[Problem]]:
    """Validate every site and node, then the references between them."""
    problems: list[Problem] = []
    data = doc.data
    if not isinstance(data, dict):
        return None, [doc.problem((), "must be a mapping with keys sites and nodes")]
    for key in data:
        if key not in ("sites", "nodes"):
            problems.append(
                doc.problem((key,), f'unknown top-level key "{key}" (valid: nodes, sites)')
            )

    sites: list[Site] = []
    site_lines: dict[str, int] = {}
    invalid_site_ids: set[str] = set()  # reported already: no second error for their nodes
    site_items = _items(doc, "sites", problems)
    all_sites = validate_all(Site, [item for _, item in site_items])
    for i, item in site_items:
        label = (
            f'site "{item["id"]}"' if isinstance(item, dict) and "id" in item else f"site #{i + 1}"
        )
        if all_sites is not None:
            site = all_sites[i]
        else:
            site, errors = validate_item(Site, item, doc, ("sites", i), label)
            problems += errors
        if not isinstance(site, Site):
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                invalid_site_ids.add(item["id"])
            continue
        if site.id in site_lines:
            problems.append(
                doc.problem(
                    ("sites", i, "id"),
                    f'duplicate site id "{site.id}" (first defined at line {site_lines[site.id]})',
                )
            )
        else:
            site_lines[site.id] = doc.line(("sites", i))
            sites.append(site)

    site_by_id = {s.id: s for s in sites}
    site_ids = site_by_id.keys()
    node_lines: dict[str, int] = {}
    nodes: list[Node] = []
    seen_addresses: dict[IPv4Address | IPv6Address, str] = {}
    node_items = _items(doc, "nodes", problems)
    all_nodes = validate_all(Node, [_with_addresses(item) for _, item in node_items])
    for i, item in node_items:
        label = (
            f'node "{item["id"]}"' if isinstance(item, dict) and "id" in item else f"node #{i + 1}"
        )
        if all_nodes is not None:
            node = all_nodes[i]
        else:
            # Each node on its own, as written (no address read ahead): the problems name
            # the node, the field and the value.
            node, errors = validate_item(Node, item, doc, ("nodes", i), label)
            problems += errors
        if not isinstance(node, Node):
            continue
        if node.id in node_lines:
            problems.append(
                doc.problem(
                    ("nodes", i, "id"),
                    f'duplicate node id "{node.id}" (first defined at line {node_lines[node.id]})',
                )
            )
            continue
        node_lines[node.id] = doc.line(("nodes", i))
        if node.site in invalid_site_ids:
            continue
        if node.site not in site_ids:
            known = ", ".join(sorted(site_ids)) or "none"
            problems.append(
                doc.problem(
                    ("nodes", i, "site"),
                    f'{label}: site "{node.site}" is not defined in sites (defined: {known})',
                )
            )
            continue
        site = site_by_id[node.site]
        if node.serves_asns and serves_of(node, site) == "any":
            problems.append(
                doc.problem(
                    ("nodes", i, "serves_asns"),
                    f"{label}: serves_asns is for on-net-only nodes, but neither the node nor its site "
                    f'"{site.id}" says serves: on-net',
                )
            )
        for field in ("ipv4", "ipv6"):
            # The address objects as keys (equal exactly when their texts are): str() of
            # 40,000 addresses cost a second on the world inventory.
            address = getattr(node, field)
            if address in seen_addresses:
                problems.append(
                    doc.problem(
                        ("nodes", i, field),
                        f'{label}: {field} {address} is already used by node "{seen_addresses[address]}"',
                    )
                )
            seen_addresses[address] = node.id
        nodes.append(node)

    if problems:
        return None, problems
    if not nodes:
        return None, [doc.problem(("nodes",), "at least one node is required")]
    return Inventory(sites=tuple(sites), nodes=tuple(nodes)), []


_ADDRESS_FIELDS = (("ipv4", socket.AF_INET, IPv4Address), ("ipv6", socket.AF_INET6, IPv6Address))


def _with_addresses(item: object) -> object:
    """``item`` with its ``ipv4`` and ``ipv6`` texts read ahead into addresses where each is
    exactly the text ``inet_ntop`` writes for its own bytes: such a text is an address in
    canonical form, which ``ipaddress`` (pydantic's reader) takes to the same value. Reading
    the 40,000 addresses of the world inventory was 0.085 s of the 0.14 s validating it;
    read ahead, 0.045 s. Any other value is left as it is, for pydantic to read or refuse
    (and a node that is not valid is validated again as written, for its problems)."""
    if not isinstance(item, dict):
        return item
    out = item
    for field, family, kind in _ADDRESS_FIELDS:
        text = item.get(field)
        if type(text) is not str:
            continue
        try:
            packed = socket.inet_pton(family, text)
        except (OSError, ValueError):  # not an address in this family, or not ASCII
            continue
        if socket.inet_ntop(family, packed) == text:
            if out is item:
                out = dict(item)
            out[field] = kind(packed)
    return out


def _items(doc: LocatedYaml, key: str, problems: list[Problem]) -> list[tuple[int, object]]:
    value = doc.data.get(key)
    if value is None:
        problems.append(doc.problem((), f'missing required key "{key}"'))
        return []
    if not isinstance(value, list):
        problems.append(doc.problem((key,), f'"{key}" must be a list'))
        return []
    return list(enumerate(value))
