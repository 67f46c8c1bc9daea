"""RFC 1035 zone files: ``<origin>.zone``, one per served zone, read with dnspython.

The origin of a zone is its file name without ``.zone`` (``cdn.example.zone`` serves
``cdn.example.``). ``$INCLUDE`` is refused so a zone never reads outside the directory.
"""

from __future__ import annotations

import re
from pathlib import Path

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.tokenizer
import dns.zone
import dns.zonefile

from router.config.problems import Problem

# A parse error stops dnspython's reader, so to report more than the first one we blank
# the offending line and read again, at most this many times per file.
MAX_ERRORS_PER_ZONE = 20

_LOCATED = re.compile(r"^.*?:(\d+): (.*)$", re.DOTALL)


def zone_origin(path: Path) -> dns.name.Name:
    return dns.name.from_text(path.name.removesuffix(".zone"))


def parse_zone(path: Path, display: str) -> tuple[dns.zone.Zone | None, list[Problem]]:
    """Read one zone file and check what dnspython does not: glue for in-zone NS targets."""
    try:
        text = path.read_text(encoding="utf-8")
        origin = zone_origin(path)
    except (OSError, UnicodeDecodeError, dns.exception.DNSException) as exc:
        return None, [Problem(display, 1, f"cannot read zone file: {exc}")]
    lines = text.split("\n")
    problems: list[Problem] = []
    zone = None
    for _ in range(MAX_ERRORS_PER_ZONE):
        zone, problem = _read(text, origin, display)
        if problem is None:
            break
        problems.append(problem)
        if problem.line < 1 or problem.line > len(lines) or not lines[problem.line - 1].strip():
            break
        lines[problem.line - 1] = ""
        text = "\n".join(lines)
    if problems:
        return None, problems
    assert zone is not None
    return zone, _check_semantics(zone, origin, text, display)


def _read(text: str, origin: dns.name.Name, display: str) -> tuple[dns.zone.Zone | None, Problem | None]:
    zone = dns.zone.Zone(origin, dns.rdataclass.IN, relativize=False)
    tok = dns.tokenizer.Tokenizer(text, display)
    try:
        with zone.writer(True) as txn:
            reader = dns.zonefile.Reader(tok, dns.rdataclass.IN, txn, allow_include=False)
            reader.read()
    except dns.exception.SyntaxError as exc:
        match = _LOCATED.match(str(exc))
        if match:
            return None, Problem(display, int(match.group(1)), match.group(2))
        return None, Problem(display, tok.line_number, str(exc))
    except dns.zonefile.CNAMEAndOtherData:
        return None, Problem(
            display, tok.line_number, "a name with a CNAME record cannot have other records (RFC 1034 3.6.2)"
        )
    except dns.exception.DNSException as exc:
        return None, Problem(display, tok.line_number, str(exc) or type(exc).__name__)
    return zone, None


def _check_semantics(zone: dns.zone.Zone, origin: dns.name.Name, text: str, display: str) -> list[Problem]:
    problems = []
    apex = zone.get_node(origin)
    if apex is None or apex.get_rdataset(dns.rdataclass.IN, dns.rdatatype.SOA) is None:
        problems.append(Problem(display, 1, f"zone {origin} has no SOA record at its apex"))
    ns = apex.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NS) if apex is not None else None
    if ns is None:
        problems.append(Problem(display, 1, f"zone {origin} has no NS records at its apex"))
    owner_lines = owner_line_index(text, origin)
    for name, node in zone.nodes.items():
        nsset = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NS)
        if nsset is None:
            continue
        for rdata in nsset:
            target = rdata.target
            if not target.is_subdomain(origin):
                continue
            target_node = zone.get_node(target)
            has_address = target_node is not None and any(
                target_node.get_rdataset(dns.rdataclass.IN, t) is not None
                for t in (dns.rdatatype.A, dns.rdatatype.AAAA)
            )
            if not has_address:
                problems.append(
                    Problem(
                        display,
                        owner_lines.get(name, 1),
                        f"NS target {target} is inside the zone but has no A or AAAA record (glue)",
                    )
                )
    return problems


def owner_line_index(text: str, origin: dns.name.Name) -> dict[dns.name.Name, int]:
    """First line on which each owner name appears, for messages about parsed records.

    dnspython keeps no positions once a zone is read; owner names start in column 0,
    so a light scan of the text is enough to point the operator at the right line.
    """
    index: dict[dns.name.Name, int] = {}
    current_origin = origin
    for number, line in enumerate(text.split("\n"), start=1):
        if not line or line[0] in " \t;(":
            continue
        token = line.split()[0]
        if token.upper() == "$ORIGIN" and len(line.split()) > 1:
            try:
                current_origin = dns.name.from_text(line.split()[1], origin)
            except dns.exception.DNSException:
                pass
            continue
        if token.startswith("$"):
            continue
        try:
            name = current_origin if token == "@" else dns.name.from_text(token, current_origin)
        except dns.exception.DNSException:
            continue
        index.setdefault(name, number)
    return index
