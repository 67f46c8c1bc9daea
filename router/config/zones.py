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


class _LineTrackingTokenizer(dns.tokenizer.Tokenizer):
    """Remembers the line on which the last token started.

    dnspython reports errors at the tokenizer's position, which is already on the next
    line when the offending token ended the line (a missing MX preference, a bad address
    at the end of a record); the line where that token started is the right one.
    """

    token_line = 1
    record_line = 1  # first line of the record being read
    _ungotten_line = 1

    def get(self, want_leading: bool = False, want_comment: bool = False) -> dns.tokenizer.Token:
        line = self._ungotten_line if self.ungotten_token is not None else self.line_number
        token = super().get(want_leading, want_comment)
        self.token_line = line
        return token

    def unget(self, token: dns.tokenizer.Token) -> None:
        super().unget(token)
        self._ungotten_line = self.token_line


class _Reader(dns.zonefile.Reader):
    def _rr_line(self) -> None:
        # The reader has just pushed back the record's first token.
        self.tok.record_line = self.tok._ungotten_line  # type: ignore[attr-defined]
        super()._rr_line()


def _read(
    text: str, origin: dns.name.Name, display: str
) -> tuple[dns.zone.Zone | None, Problem | None]:
    zone = dns.zone.Zone(origin, dns.rdataclass.IN, relativize=False)
    tok = _LineTrackingTokenizer(text, display)
    lines = text.split("\n")

    def problem(message: str) -> Problem:
        line = max(1, tok.token_line)
        source = lines[line - 1].split(";", 1)[0].strip() if line <= len(lines) else ""
        return Problem(display, line, f"{message}: {source}" if source else message)

    try:
        with zone.writer(True) as txn:
            reader = _Reader(tok, dns.rdataclass.IN, txn, allow_include=False)
            reader.read()
    except dns.exception.SyntaxError as exc:
        match = _LOCATED.match(str(exc))
        message = match.group(2) if match else str(exc)
        return None, problem(message.rstrip("."))
    except dns.zonefile.CNAMEAndOtherData:
        # Raised when the record is stored, after its whole line was read.
        tok.token_line = tok.record_line
        return None, problem(
            "a name with a CNAME record cannot have other records (RFC 1034 3.6.2)"
        )
    except dns.exception.DNSException as exc:
        return None, problem(str(exc) or type(exc).__name__)
    return zone, None


def _check_semantics(
    zone: dns.zone.Zone, origin: dns.name.Name, text: str, display: str
) -> list[Problem]:
    problems = []
    lines = record_line_index(text, origin)
    apex_line = lines.get((origin, dns.rdatatype.SOA), 1)
    apex = zone.get_node(origin)
    if apex is None or apex.get_rdataset(dns.rdataclass.IN, dns.rdatatype.SOA) is None:
        problems.append(Problem(display, 1, f"zone {origin} has no SOA record at its apex"))
    ns = apex.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NS) if apex is not None else None
    if ns is None:
        problems.append(Problem(display, apex_line, f"zone {origin} has no NS records at its apex"))
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
                line = lines.get(
                    (name, dns.rdatatype.NS, target), lines.get((name, dns.rdatatype.NS), 1)
                )
                problems.append(
                    Problem(
                        display,
                        line,
                        f"NS target {target} is inside the zone but has no A or AAAA record (glue)",
                    )
                )
    return problems


def record_line_index(text: str, origin: dns.name.Name) -> dict[tuple, int]:
    """First line of each (owner, type) in a zone file, for messages about parsed records;
    for name-valued records also of each (owner, type, target).

    dnspython keeps no positions once a zone is read, so this light scan follows the
    file's own rules that matter here: an owner in column 0 (else the previous owner
    continues), optional TTL and class before the type, parentheses spanning lines.
    """
    index: dict[tuple, int] = {}
    current_origin = origin
    owner = origin
    depth = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.split(";", 1)[0]
        if depth > 0:
            depth += line.count("(") - line.count(")")
            continue
        tokens = line.split()
        if not tokens:
            continue
        if tokens[0].upper() == "$ORIGIN" and len(tokens) > 1:
            try:
                current_origin = dns.name.from_text(tokens[1], origin)
            except dns.exception.DNSException:
                pass
            continue
        if tokens[0].startswith("$"):
            continue
        if not line[0].isspace():
            try:
                owner = (
                    current_origin
                    if tokens[0] == "@"
                    else dns.name.from_text(tokens[0], current_origin)
                )
            except dns.exception.DNSException:
                continue
            tokens = tokens[1:]
        depth = line.count("(") - line.count(")")
        for position, token in enumerate(tokens):
            if token.isdigit() or token.upper() in ("IN", "CH", "HS") or token[0].isdigit():
                continue
            try:
                rdtype = dns.rdatatype.from_text(token)
            except dns.exception.DNSException:
                break
            index.setdefault((owner, rdtype), number)
            if rdtype in (dns.rdatatype.NS, dns.rdatatype.CNAME) and position + 1 < len(tokens):
                try:
                    target = dns.name.from_text(tokens[position + 1], current_origin)
                    index.setdefault((owner, rdtype, target), number)
                except dns.exception.DNSException:
                    pass
            break
    return index
