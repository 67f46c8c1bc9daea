"""Client-map coverage of the deployment's networks: ``router check --coverage``.

``coverage:`` in deployment.yaml names the announced-prefix file (CSV ``prefix,asn[,org]``,
see ``router.geo.mapcoverage``) and which networks to check::

    coverage:
      announced: ../geodata/iberia-announced.csv  # relative to deployment.yaml
      asns: [3215, 12322]     # optional: more networks to check
      map_asns: false         # optional: true checks every ASN the client map has a group of

The deployment's ASNs, each with why it is one:

- the ``asn`` of every node (its clients are on-net);
- every ASN in a site's or node's ``serves_asns`` (an on-net-only node serves them);
- every ASN a policy rule's ``asns`` names (the rule matches them by the map's ASN);
- every ASN of ``coverage.asns`` (networks the operator cares about without a node, such as
  the sample's French and Moroccan ISPs, steered by their country);
- with ``map_asns: true``, every ASN the client map has a group of (for a map meant to cover
  every network, like the world deployment's; against a regional map and a full BGP table
  it lists every foreign network's prefixes).

Every announced prefix of those ASNs is judged against the client map: placed whole in a
group of its ASN (ok), partly in none (partial), partly or wholly in a group of another
network (mismatch), or not at all (missing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from router.config.nodes import Asn
from router.config.problems import ConfigError, Problem
from router.geo.clientmap import ClientMapError
from router.geo.mapcoverage import Coverage, map_coverage, read_announced

if TYPE_CHECKING:
    from router.config.deployment import Deployment

MAX_NAMED = 3  # nodes named per ASN in the report; the rest are counted


class CoverageSettings(BaseModel):
    """``coverage:`` of deployment.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    announced: str  # the announced-prefix file, relative to deployment.yaml
    asns: tuple[Asn, ...] = ()  # more networks to check
    map_asns: bool = False  # also every ASN the client map has a group of


@dataclass(frozen=True)
class CoverageReport:
    directory: str
    coverage: Coverage
    why: dict[int, str]  # ASN -> why it is one of the deployment's ("nodes tef-mad-1, ...")

    @property
    def gaps(self) -> int:
        return len(self.coverage.gaps)


def deployment_asns(deployment: Deployment) -> dict[int, str]:
    """The deployment's ASNs (see the module docstring), each with why it is one."""
    reasons: dict[int, list[str]] = {}
    nodes: dict[int, list[str]] = {}
    for node in deployment.inventory.nodes:
        nodes.setdefault(node.asn, []).append(node.id)
    for asn, ids in nodes.items():
        more = f" and {len(ids) - MAX_NAMED} more" if len(ids) > MAX_NAMED else ""
        reasons.setdefault(asn, []).append(
            f"node{'s' * (len(ids) > 1)} {', '.join(ids[:MAX_NAMED])}{more}"
        )
    for site in deployment.inventory.sites:
        for asn in site.serves_asns or ():
            reasons.setdefault(asn, []).append(f"serves_asns of site {site.id}")
    for node in deployment.inventory.nodes:
        for asn in node.serves_asns or ():
            reasons.setdefault(asn, []).append(f"serves_asns of node {node.id}")
    several_zones = len(deployment.zones) > 1
    for (zone, name), policy in sorted(
        deployment.policies.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])
    ):
        label = f'policy "{name}"' + (f" of {zone}" if several_zones else "")
        for number, rule in enumerate(policy.rules, start=1):
            for asn in rule.asns or ():
                if asn:  # 0 (clients of unknown networks) announces nothing
                    reasons.setdefault(asn, []).append(f"{label} rule {number}")
    settings = deployment.coverage
    if settings is not None:
        for asn in settings.asns:
            reasons.setdefault(asn, []).append("coverage.asns")
        if settings.map_asns:
            groups = deployment.client_map.groups
            for asn in {int(a) for a in groups.asn[1:]} - {0}:
                reasons.setdefault(asn, []).append("client map")
    return {asn: "; ".join(dict.fromkeys(why)) for asn, why in sorted(reasons.items())}


def check_coverage(deployment: Deployment, announced: Path | None = None) -> CoverageReport:
    """Judge the deployment's ASNs' announced prefixes against its client map.

    ``announced`` overrides ``coverage.announced``. Raises ConfigError when there is no
    file to read or it has problems (each with its file and line)."""
    settings = deployment.coverage
    if announced is None:
        if settings is None:
            raise ConfigError([Problem(str(deployment.directory / "deployment.yaml"), 0, (
                "no coverage: section: name the announced-prefix file (coverage: {announced: FILE}, "
                "CSV prefix,asn[,org]) or give router check --announced FILE"
            ))])  # fmt: skip
        announced = deployment.directory / settings.announced
    label = os.path.normpath(announced)
    if not announced.is_file():
        raise ConfigError([Problem(label, 0, "no such announced-prefix file")])
    try:
        table = read_announced(announced, label)
    except ClientMapError as exc:
        raise ConfigError([Problem(p.path, p.line, p.message) for p in exc.problems]) from exc
    why = deployment_asns(deployment)
    return CoverageReport(
        str(deployment.directory), map_coverage(deployment.client_map, table, why), why
    )


def to_text(report: CoverageReport) -> str:
    """The human report: a summary line, counts per ASN, then every gap and where it falls."""
    c = report.coverage
    lines = [
        f"{report.directory}: client-map coverage of {len(c.asns)} ASN(s) against {c.source}: "
        f"{c.prefixes} announced prefix(es), {c.count('ok')} placed, {c.count('partial')} partly placed, "
        f"{c.count('mismatch')} in another network's group, {c.count('missing')} not placed",
        f"  {'asn':<12} {'prefixes':>8} {'ok':>8} {'partial':>8} {'mismatch':>8} {'missing':>8}  org (why checked)",
    ]
    for a in c.asns:
        note = "" if a.prefixes else "; none in the announced file"
        lines.append(
            f"  {'AS' + str(a.asn):<12} {a.prefixes:>8} {a.ok:>8} {a.partial:>8} {a.mismatch:>8} {a.missing:>8}  "
            f"{a.org or '-'} ({report.why.get(a.asn, '')}{note})"
        )
    if not c.gaps:
        lines.append(
            "no gaps: every announced prefix of these ASNs is placed in a group of its ASN"
        )
        return "\n".join(lines)
    lines.append(
        f"{len(c.gaps)} gap(s) (file:line prefix ASN org: kind: addresses -> where they fall):"
    )
    for gap in c.gaps:
        lines.append(
            f"  {c.source}:{gap.line}: {gap.prefix} AS{gap.asn} {gap.org or '-'}: {gap.kind}"
        )
        for part in gap.parts:
            blocks = ", ".join(part.prefixes[:4])
            if len(part.prefixes) > 4:
                blocks += f" and {len(part.prefixes) - 4} more block(s)"
            where = part.falls_to
            if part.group == 0:
                where += ": steered as from each policy's default_site"
            lines.append(f"      {blocks} -> {where}")
    return "\n".join(lines)
