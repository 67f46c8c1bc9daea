"""The answer book: every answer the zones can give, encoded once, ahead of queries.

Answers are stored as wire bytes that follow the question section. Compression pointers
in them point into the question at fixed offsets, which is safe because the question is
echoed with the client's own bytes (same length, same label positions, any case), so a
query only patches the header and appends its OPT record.

Three kinds of entry:
- ``StaticAnswer``: the whole reply body (positive, CNAME, negative, referral, ANY).
- ``SteeredAnswer``: A or AAAA of a steered name; the node list comes from the routing
  table per client group, and the body for each answer set is encoded on first use.
- negative and referral templates depend only on the zone and the question length, so
  they are cached per (zone, length) and serve any name, including random ones.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import dns.name
import dns.node
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.HINFO
import dns.rrset
import dns.zone

from router.dns import wire
from router.dns.dnssec import NsecChain, ZoneSigner

A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
CNAME = dns.rdatatype.CNAME
NS = dns.rdatatype.NS
SOA = dns.rdatatype.SOA
IN = dns.rdataclass.IN

MAX_CNAME_CHAIN = 8
# RFC 8482 4.2: a synthesized HINFO answers ANY; its TTL is the operator's choice.
ANY_HINFO_TTL = 3600
# Address-record lookups that the additional section does for these types' targets.
_ADDITIONAL_TARGET = {dns.rdatatype.MX: "exchange", NS: "target", dns.rdatatype.SRV: "target"}


class StaticAnswer:
    """A reply body that does not depend on the client; ``signed``: the same with its
    RRSIGs (and denial of existence), for queries with DO=1 to a signed zone."""

    __slots__ = ("flags", "an", "ns", "ar", "main", "extra", "extra_required", "signed")

    def __init__(
        self, flags: int, an: int, ns: int, ar: int, main: bytes, extra: bytes, extra_required: bool
    ) -> None:
        self.flags = flags  # AA bit and RCODE
        self.an = an
        self.ns = ns
        self.ar = ar
        self.main = main  # answer + authority sections
        self.extra = extra  # additional section (before OPT)
        self.extra_required = extra_required  # referral glue: truncate rather than drop
        self.signed: StaticAnswer | None = None


class SteeredAnswer:
    """A or AAAA records of a steered name; one pre-encoded record per node."""

    __slots__ = ("index", "policy", "rdtype", "ttl", "records", "owner")

    def __init__(
        self,
        index: int,
        policy: int,
        rdtype: int,
        ttl: int,
        records: tuple[bytes, ...],
        owner: bytes = b"",
    ) -> None:
        self.owner = owner  # the steered name (wire, lower case): what its RRSIGs cover
        self.index = index
        self.policy = policy
        self.rdtype = rdtype
        self.ttl = ttl
        self.records = records  # per node: owner pointer to the question + type..rdata

    def encode(self, nodes: list[int]) -> bytes:
        return b"".join(self.records[n] for n in nodes if n >= 0)


@dataclass
class ZoneIndex:
    """What the slow path needs to answer names that have no exact entry."""

    origin: dns.name.Name
    zone: dns.zone.Zone
    soa: dns.rrset.RRset  # with the negative-caching TTL of RFC 2308
    names: set[bytes] = field(default_factory=set)  # existing, non-occluded names (wire, lower)
    empty_non_terminals: set[bytes] = field(default_factory=set)
    cuts: dict[bytes, dns.name.Name] = field(default_factory=dict)  # delegation points
    wildcards: dict[bytes, dns.name.Name] = field(default_factory=dict)  # parent wire -> *.parent
    cnames: dict[bytes, dns.name.Name] = field(default_factory=dict)
    # Negative answers and referrals per (kind, rcode or cut, question length): bounded
    # by 255 lengths per kind, so random names cannot grow it.
    templates: dict[tuple[str, int, bytes], StaticAnswer] = field(default_factory=dict)
    signer: ZoneSigner | None = None  # None: the zone is not signed
    chain: NsecChain | None = None
    # Signed denials per (rcode, NSEC records): bounded by the chain's size squared.
    denials: dict[tuple[int, tuple[int, ...]], StaticAnswer] = field(default_factory=dict)


def name_key(name: dns.name.Name) -> bytes:
    """Lower-cased wire form: the lookup key of a name."""
    return name.canonicalize().to_wire()


def suffixes(qname: bytes) -> list[bytes]:
    """Wire suffixes of a wire name, longest first, ending with the root."""
    out = []
    pos = 0
    while True:
        out.append(qname[pos:])
        length = qname[pos]
        if length == 0:
            return out
        pos += length + 1


def _encode(
    question: dns.name.Name | None,
    qlen: int,
    anchor: dns.name.Name | None,
    sections: list[list[dns.rrset.RRset]],
) -> tuple[list[bytes], list[int]]:
    """Encode sections as they follow a question of ``qlen`` octets.

    With ``question`` the names compress against the whole question name. Without it
    (templates that serve any name) they compress only against ``anchor``, a suffix
    every such question ends with (the zone origin or the delegation point).
    """
    buf = io.BytesIO()
    buf.write(b"\0" * 12)
    compress: dict[dns.name.Name, int] = {}
    if question is not None:
        question.canonicalize().to_wire(buf, compress)
    else:
        buf.write(b"\0" * qlen)
        if anchor is not None:
            offset = 12 + qlen - len(anchor.to_wire())
            name = anchor
            while len(name) > 1:
                compress[name] = offset
                offset += len(name.labels[0]) + 1
                name = name.parent()
    buf.write(b"\0" * 4)
    chunks, counts = [], []
    for section in sections:
        start = buf.tell()
        count = 0
        for rrset in section:
            count += rrset.to_wire(buf, compress)
        chunks.append(buf.getvalue()[start:])
        counts.append(count)
    return chunks, counts


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
    rrset.update(rdataset)
    return rrset


def _hinfo_rrset(owner: dns.name.Name) -> dns.rrset.RRset:
    rdata = dns.rdtypes.ANY.HINFO.HINFO(IN, dns.rdatatype.HINFO, b"RFC8482", b"")
    return dns.rrset.from_rdata(owner, ANY_HINFO_TTL, rdata)


class AnswerBook:
    """All zones compiled for the responder; immutable once built."""

    def __init__(
        self,
        zones: dict[dns.name.Name, dns.zone.Zone],
        steered: list[tuple[dns.name.Name, int, int]],
        node_addresses: list[tuple[bytes, bytes]],
        signers: dict[dns.name.Name, ZoneSigner] | None = None,
    ) -> None:
        """``steered``: (name, policy index, ttl); ``node_addresses``: (ipv4, ipv6) packed;
        ``signers``: the signed zones' signers (the rest are served unsigned)."""
        self.exact: dict[tuple[bytes, int], StaticAnswer | SteeredAnswer] = {}
        self.zones: dict[bytes, ZoneIndex] = {}
        self.steered_names: dict[bytes, int] = {}
        self.steered: list[SteeredAnswer] = []
        self._chains: dict[dns.name.Name, NsecChain] = {}
        # A record's bytes depend on its type, TTL and address only (the owner is a pointer
        # to the question): names with the same TTL share one tuple, made once.
        records_of: dict[tuple[int, int], tuple[bytes, ...]] = {}
        for name, policy, ttl in steered:
            key = name_key(name)
            self.steered_names[key] = policy
            for rdtype, family in ((A, 0), (AAAA, 1)):
                records = records_of.get((rdtype, ttl))
                if records is None:
                    records = _steered_records(rdtype, ttl, [a[family] for a in node_addresses])
                    records_of[(rdtype, ttl)] = records
                entry = SteeredAnswer(len(self.steered), policy, rdtype, ttl, records, key)
                self.steered.append(entry)
                self.exact[(key, rdtype)] = entry
        for origin, zone in zones.items():
            signer = (signers or {}).get(origin)
            if signer is not None:
                zone = self._with_dnssec_records(origin, zone, signer)
            self._index_zone(origin, zone, signer)
        # The signer of each steered entry's zone (None: unsigned), for the routing tables.
        self.steered_signers: list[ZoneSigner | None] = []
        for entry in self.steered:
            index = self.zone_of(entry.owner)
            self.steered_signers.append(index.signer if index is not None else None)

    def signed_steered(self, entry: SteeredAnswer) -> bool:
        return self.steered_signers[entry.index] is not None

    def wildcard_proof(self, qname: bytes) -> tuple[bytes, int]:
        """The signed NSEC record covering ``qname`` (a name a steered wildcard answers):
        uncompressed bytes and record count, for the authority section."""
        index = self.zone_of(qname)
        assert index is not None and index.chain is not None
        return self.denial_piece(index, index.chain.index_of(qname))

    # -- building ---------------------------------------------------------------------

    def _with_dnssec_records(
        self, origin: dns.name.Name, zone: dns.zone.Zone, signer: ZoneSigner
    ) -> dns.zone.Zone:
        """A copy of ``zone`` with the DNSKEY set at the apex and an NSEC record at every
        authoritative name, delegation point and steered name (RFC 4035 2.1, 2.3)."""
        soa_rdataset = zone.get_node(origin).get_rdataset(IN, SOA)
        cuts = [n for n, node in zone.nodes.items()
                if n != origin and node.get_rdataset(IN, NS) is not None]  # fmt: skip
        types_at: dict[dns.name.Name, set[int]] = {}
        for name, node in zone.nodes.items():
            if any(name.is_subdomain(cut) for cut in cuts if name != cut):
                continue  # glue: not authoritative, no NSEC (RFC 4035 2.3)
            types = {r.rdtype for r in node.rdatasets}
            if name in cuts:
                types &= {NS, dns.rdatatype.DS}
            types_at[name] = types
        types_at[origin].add(dns.rdatatype.DNSKEY)
        for key in self.steered_names:
            name = dns.name.from_wire(key, 0)[0]
            if name.is_subdomain(origin):
                types_at.setdefault(name, set()).update((A, AAAA))
        # RFC 9077: the NSEC TTL is the negative-caching TTL.
        chain = NsecChain.build(origin, types_at, min(soa_rdataset.ttl, soa_rdataset[0].minimum))
        copy = dns.zone.Zone(origin, relativize=False)
        for name, node in zone.nodes.items():
            fresh = dns.node.Node()
            fresh.rdatasets.extend(node.rdatasets)
            copy.nodes[name] = fresh
        for name, nsec in zip(chain.names, chain.records):
            copy.nodes.setdefault(name, dns.node.Node()).rdatasets.append(nsec.to_rdataset())
        copy.nodes[origin].rdatasets.append(signer.dnskey_rrset().to_rdataset())
        self._chains[origin] = chain
        return copy

    def _index_zone(
        self, origin: dns.name.Name, zone: dns.zone.Zone, signer: ZoneSigner | None = None
    ) -> None:
        soa_rdataset = zone.get_node(origin).get_rdataset(IN, SOA)
        soa = _rrset(origin, soa_rdataset)
        soa.ttl = min(soa_rdataset.ttl, soa_rdataset[0].minimum)  # RFC 2308 section 3
        index = ZoneIndex(origin=origin, zone=zone, soa=soa, signer=signer,
                          chain=self._chains.get(origin) if signer is not None else None)  # fmt: skip
        self.zones[name_key(origin)] = index
        for name, node in zone.nodes.items():
            if name != origin and node.get_rdataset(IN, NS) is not None:
                index.cuts[name_key(name)] = name
        for name in zone.nodes:
            if self._below_cut(index, name):
                continue
            key = name_key(name)
            index.names.add(key)
            if name.labels[0] == b"*":
                index.wildcards[name_key(name.parent())] = name
        origin_key = name_key(origin)
        for key in self.steered_names:
            if origin_key in suffixes(key):  # label-aligned: the steered name is in this zone
                index.names.add(key)
        for key in list(index.names):
            for suffix in suffixes(key)[1:]:
                if suffix == name_key(origin) or len(suffix) < len(name_key(origin)):
                    break
                if suffix not in index.names:
                    index.empty_non_terminals.add(suffix)
        for name, node in zone.nodes.items():
            if self._below_cut(index, name) and name_key(name) not in index.cuts:
                continue
            key = name_key(name)
            if key in index.cuts:
                # Everything at a delegation point is answered by a referral, except the
                # DS set, which belongs to the parent side of the cut (RFC 4035 3.1.4.1).
                ds = node.get_rdataset(IN, dns.rdatatype.DS)
                if ds is not None:
                    self.exact[(key, dns.rdatatype.DS)] = self._positive(index, name, ds)
                continue
            cname = node.get_rdataset(IN, CNAME)
            if cname is not None:
                index.cnames[key] = name
                self.exact[(key, CNAME)] = self._positive(index, name, cname)
                for qtype in (A, AAAA):
                    self.exact[(key, qtype)] = self._cname_chain(index, name, qtype)
                self.exact[(key, wire.TYPE_ANY)] = self._positive(index, name, cname)
                continue
            for rdataset in node.rdatasets:
                self.exact[(key, rdataset.rdtype)] = self._positive(index, name, rdataset)
            self.exact[(key, wire.TYPE_ANY)] = self._any(index, name)
        for key in self.steered_names:
            if key in index.names and (key, wire.TYPE_ANY) not in self.exact:
                self.exact[(key, wire.TYPE_ANY)] = self._any(index, dns.name.from_wire(key, 0)[0])

    @staticmethod
    def _below_cut(index: ZoneIndex, name: dns.name.Name) -> bool:
        return any(name.is_subdomain(cut) for cut in index.cuts.values())

    def _additional(self, index: ZoneIndex, rrsets: list[dns.rrset.RRset]) -> list[dns.rrset.RRset]:
        extra: list[dns.rrset.RRset] = []
        seen: set[dns.name.Name] = set()
        for rrset in rrsets:
            attribute = _ADDITIONAL_TARGET.get(rrset.rdtype)
            if attribute is None:
                continue
            for rdata in rrset:
                target = getattr(rdata, attribute)
                if target in seen or not target.is_subdomain(index.origin):
                    continue
                seen.add(target)
                node = index.zone.get_node(target)
                if node is None:
                    continue
                for rdtype in (A, AAAA):
                    rdataset = node.get_rdataset(IN, rdtype)
                    if rdataset is not None:
                        extra.append(_rrset(target, rdataset))
        return extra

    def _static(
        self,
        question: dns.name.Name | None,
        qlen: int,
        anchor: dns.name.Name | None,
        rcode: int,
        authoritative: bool,
        answer: list[dns.rrset.RRset],
        authority: list[dns.rrset.RRset],
        additional: list[dns.rrset.RRset],
        extra_required: bool = False,
        index: ZoneIndex | None = None,
        denial: list[dns.rrset.RRset] | None = None,
        signatures: dict[int, dns.rrset.RRset] | None = None,
    ) -> StaticAnswer:
        """The answer, and with ``index`` of a signed zone its signed twin: an RRSIG after
        every authoritative RRset, the ``denial`` NSEC records (signed) in the authority
        section; ``signatures``: RRSIGs made elsewhere, by id of the RRset (wildcards)."""
        (an_bytes, ns_bytes, ar_bytes), (an, ns, ar) = _encode(
            question, qlen, anchor, [answer, authority, additional]
        )
        flags = (wire.AA if authoritative else 0) | rcode
        plain = StaticAnswer(flags, an, ns, ar, an_bytes + ns_bytes, ar_bytes, extra_required)
        if index is not None and index.signer is not None:
            sections = [self._with_signatures(index, s, signatures or {})
                        for s in (answer, authority + (denial or []), additional)]  # fmt: skip
            (an_bytes, ns_bytes, ar_bytes), (an, ns, ar) = _encode(question, qlen, anchor, sections)
            plain.signed = StaticAnswer(
                flags, an, ns, ar, an_bytes + ns_bytes, ar_bytes, extra_required
            )
        return plain

    def _with_signatures(
        self,
        index: ZoneIndex,
        rrsets: list[dns.rrset.RRset],
        signatures: dict[int, dns.rrset.RRset],
    ) -> list[dns.rrset.RRset]:
        assert index.signer is not None
        out = []
        for rrset in rrsets:
            out.append(rrset)
            made = signatures.get(id(rrset))
            if made is not None:
                out.append(made)
            elif self._authoritative(index, rrset):
                out.append(index.signer.sign(rrset))
        return out

    def _authoritative(self, index: ZoneIndex, rrset: dns.rrset.RRset) -> bool:
        """Signed data: not glue below a cut, not the NS set of a cut (RFC 4035 2.2)."""
        key = name_key(rrset.name)
        if key in index.cuts:
            return rrset.rdtype != NS
        return not self._below_cut(index, rrset.name)

    def _denial(self, index: ZoneIndex, names: list[bytes]) -> list[dns.rrset.RRset]:
        """The NSEC records owning or covering each name (wire), each once, in order."""
        assert index.chain is not None
        seen: list[int] = []
        for key in names:
            i = index.chain.index_of(key)
            if i not in seen:
                seen.append(i)
        return [index.chain.records[i] for i in seen]

    def signed_denial(self, index: ZoneIndex, rcode: int, names: list[bytes]) -> StaticAnswer:
        """NXDOMAIN or NODATA of a signed zone: SOA, the NSEC records of ``names``, each
        with its RRSIG. Encoded without compression, so the bytes serve any question (the
        compiled path assembles the same bytes from per-record pieces)."""
        assert index.chain is not None and index.signer is not None
        records = tuple(dict.fromkeys(index.chain.index_of(key) for key in names))
        cached = index.denials.get((rcode, records))
        if cached is None:
            soa, soa_count = self.denial_piece(index, -1)
            main, count = soa, soa_count
            for i in records:
                piece, piece_count = self.denial_piece(index, i)
                main += piece
                count += piece_count
            cached = StaticAnswer(wire.AA | rcode, 0, count, 0, main, b"", False)
            index.denials[(rcode, records)] = cached
        return cached

    def denial_piece(self, index: ZoneIndex, record: int) -> tuple[bytes, int]:
        """One uncompressed piece of a signed denial: the SOA (``record`` -1) or the NSEC
        record ``record`` of the chain, then its RRSIGs; (bytes, record count)."""
        assert index.chain is not None and index.signer is not None
        rrset = index.soa if record < 0 else index.chain.records[record]
        buf = io.BytesIO()
        count = rrset.to_wire(buf, None)
        count += index.signer.sign(rrset).to_wire(buf, None)
        return buf.getvalue(), count

    def closest_encloser(self, index: ZoneIndex, qname: bytes) -> bytes:
        """The longest existing ancestor of a name that does not exist (RFC 5155 1.3)."""
        origin_len = len(name_key(index.origin))
        for suffix in suffixes(qname)[1:]:
            if (
                suffix in index.names
                or suffix in index.empty_non_terminals
                or len(suffix) <= origin_len
            ):
                return suffix
        return name_key(index.origin)

    def _positive(
        self, index: ZoneIndex, qname: dns.name.Name, rdataset: dns.rdataset.Rdataset
    ) -> StaticAnswer:
        answer = [_rrset(qname, rdataset)]
        return self._static(
            qname,
            len(qname.to_wire()),
            None,
            wire.NOERROR,
            True,
            answer,
            [],
            self._additional(index, answer),
            index=index,
        )

    def _any(
        self, index: ZoneIndex, qname: dns.name.Name, wildcard: dns.name.Name | None = None
    ) -> StaticAnswer:
        """RFC 8482 HINFO; under a wildcard it is the wildcard's (signed as the wildcard, with
        the proof that ``qname`` itself does not exist), so no name is ever signed online."""
        hinfo = _hinfo_rrset(qname)
        signatures, denial = {}, []
        if wildcard is not None and index.signer is not None:
            signatures[id(hinfo)] = _renamed(index.signer.sign(_hinfo_rrset(wildcard)), qname)
            denial = self._denial(index, [name_key(qname)])
        return self._static(qname, len(qname.to_wire()), None, wire.NOERROR, True, [hinfo], [], [],
                            index=index, denial=denial, signatures=signatures)  # fmt: skip

    def _cname_chain(self, index: ZoneIndex, qname: dns.name.Name, qtype: int) -> StaticAnswer:
        """Follow CNAMEs inside the zone (RFC 1034 4.3.2) and stop at a steered name.

        RFC 7871 7.2.1: when the chain reaches a tailored (steered) answer, only the
        CNAMEs are returned, so the resolver asks for the target with its ECS option.
        """
        answer: list[dns.rrset.RRset] = []
        authority: list[dns.rrset.RRset] = []
        denied: list[bytes] = []  # names whose NSEC proves the chain's end (signed zones)
        rcode = wire.NOERROR
        name = qname
        for _ in range(MAX_CNAME_CHAIN):
            node = index.zone.get_node(name)
            cname = node.get_rdataset(IN, CNAME) if node is not None else None
            if cname is None:
                break
            answer.append(_rrset(name, cname))
            target = cname[0].target
            key = name_key(target)
            if key in self.steered_names or not target.is_subdomain(index.origin):
                break
            if self._below_cut(index, target):
                break
            target_node = index.zone.get_node(target)
            if target_node is None:
                if key not in index.empty_non_terminals and key not in index.names:
                    rcode = wire.NXDOMAIN
                    denied = [key, b"\x01*" + self.closest_encloser(index, key)]
                else:
                    denied = [key]
                authority = [index.soa]
                break
            if target_node.get_rdataset(IN, CNAME) is not None:
                name = target
                continue
            rdataset = target_node.get_rdataset(IN, qtype)
            if rdataset is None:
                authority = [index.soa]
                denied = [key]
            else:
                answer.append(_rrset(target, rdataset))
            break
        denial = self._denial(index, denied) if denied and index.chain is not None else []
        return self._static(qname, len(qname.to_wire()), None, rcode, True, answer, authority, [],
                            index=index, denial=denial)  # fmt: skip

    # -- query time (slow path) ----------------------------------------------------------

    def zone_of(self, qname: bytes) -> ZoneIndex | None:
        for suffix in suffixes(qname):
            index = self.zones.get(suffix)
            if index is not None:
                return index
        return None

    def resolve(
        self, qname: bytes, qtype: int, do: bool = False
    ) -> StaticAnswer | SteeredAnswer | None:
        """Answer a name with no exact entry; None means REFUSED (not our zone). With ``do``
        a signed zone's denials come signed (the other answers carry a ``signed`` twin)."""
        index = self.zone_of(qname)
        if index is None:
            return None
        names = suffixes(qname)
        signed = do and index.signer is not None
        qlen = len(qname)
        origin_len = len(name_key(index.origin))
        for suffix in names:
            if len(suffix) <= origin_len:
                break
            cut = index.cuts.get(suffix)
            if cut is not None and not (suffix == qname and qtype == dns.rdatatype.DS):
                return self._referral(index, cut, qlen)
        if qname in index.cnames:
            return self._cname_chain(index, index.cnames[qname], qtype)
        if qname in index.names or qname in index.empty_non_terminals or qname in index.cuts:
            if qtype == wire.TYPE_ANY and qname in index.names:
                return self._any(index, dns.name.from_wire(qname, 0)[0])
            if signed:
                return self.signed_denial(index, wire.NOERROR, [qname])
            return self._negative(index, wire.NOERROR, qlen)
        # Closest encloser, then its wildcard (RFC 4592).
        encloser = self.closest_encloser(index, qname)
        wildcard = index.wildcards.get(encloser)
        if wildcard is not None:
            return self._from_wildcard(index, wildcard, dns.name.from_wire(qname, 0)[0], qtype, do)
        if signed:
            return self.signed_denial(index, wire.NXDOMAIN, [qname, b"\x01*" + encloser])
        return self._negative(index, wire.NXDOMAIN, qlen)

    def _negative(self, index: ZoneIndex, rcode: int, qlen: int) -> StaticAnswer:
        key = ("negative", qlen, bytes([rcode]))
        answer = index.templates.get(key)
        if answer is None:
            # Encoded once per zone and rcode for the shortest question; every other length
            # is the same bytes with each compression pointer moved by the difference, since
            # both the question's zone suffix and the SOA itself move with the question.
            base_len = len(index.origin.to_wire())
            base_key = ("negative", base_len, bytes([rcode]))
            base = index.templates.get(base_key)
            if base is None:
                base = self._static(None, base_len, index.origin, rcode, True, [], [index.soa], [])
                index.templates[base_key] = base
            answer = StaticAnswer(base.flags, base.an, base.ns, base.ar, _shift_soa_pointers(base.main, qlen - base_len),
                                  base.extra, base.extra_required)  # fmt: skip
            index.templates[key] = answer
        return answer

    def _referral(self, index: ZoneIndex, cut: dns.name.Name, qlen: int) -> StaticAnswer:
        key = ("referral", qlen, name_key(cut))
        answer = index.templates.get(key)
        if answer is None:
            cut_node = index.zone.get_node(cut)
            ns = _rrset(cut, cut_node.get_rdataset(IN, NS))
            glue = []
            for rdata in ns:
                node = index.zone.get_node(rdata.target)
                if node is None or not rdata.target.is_subdomain(index.origin):
                    continue
                for rdtype in (A, AAAA):
                    rdataset = node.get_rdataset(IN, rdtype)
                    if rdataset is not None:
                        glue.append(_rrset(rdata.target, rdataset))
            required = any(rdata.target.is_subdomain(cut) for rdata in ns)
            # Signed: the DS set (the child is signed) or the NSEC proving there is none
            # (RFC 4035 3.1.4).
            denial = []
            if index.chain is not None:
                ds = cut_node.get_rdataset(IN, dns.rdatatype.DS)
                denial = (
                    [_rrset(cut, ds)] if ds is not None else self._denial(index, [name_key(cut)])
                )
            answer = self._static(None, qlen, cut, wire.NOERROR, False, [], [ns], glue,
                                  extra_required=required, index=index, denial=denial)  # fmt: skip
            index.templates[key] = answer
        return answer

    def _from_wildcard(
        self,
        index: ZoneIndex,
        wildcard: dns.name.Name,
        qname: dns.name.Name,
        qtype: int,
        do: bool = False,
    ) -> StaticAnswer | SteeredAnswer:
        """RFC 4592 synthesis. Signed, the RRSIGs are the wildcard's (their label count says
        so, RFC 4035 5.3.4) and the NSEC covering ``qname`` proves no closer match exists."""
        steered_policy = self.steered_names.get(name_key(wildcard))
        if steered_policy is not None and qtype in (A, AAAA):
            return self.exact[(name_key(wildcard), qtype)]
        node = index.zone.get_node(wildcard)
        qlen = len(qname.to_wire())
        if node is None:
            return self._negative(index, wire.NOERROR, qlen)
        signer = index.signer
        cname = node.get_rdataset(IN, CNAME)
        if cname is not None and qtype != CNAME:
            rdataset = cname
        elif qtype == wire.TYPE_ANY:
            return self._any(index, qname, wildcard)
        else:
            rdataset = node.get_rdataset(IN, qtype)
        if rdataset is None:
            if do and signer is not None:
                return self.signed_denial(
                    index, wire.NOERROR, [name_key(qname), name_key(wildcard)]
                )
            return self._negative(index, wire.NOERROR, qlen)
        answer = [_rrset(qname, rdataset)]
        signatures, denial = {}, []
        if signer is not None:
            signatures[id(answer[0])] = _renamed(signer.sign(_rrset(wildcard, rdataset)), qname)
            denial = self._denial(index, [name_key(qname)])
        additional = self._additional(index, answer) if rdataset is not cname else []
        return self._static(qname, qlen, None, wire.NOERROR, True, answer, [], additional,
                            index=index, denial=denial, signatures=signatures)  # fmt: skip


def _renamed(rrset: dns.rrset.RRset, owner: dns.name.Name) -> dns.rrset.RRset:
    out = dns.rrset.RRset(owner, rrset.rdclass, rrset.rdtype, rrset.covers)
    out.update(rrset)
    return out


def _shift_soa_pointers(rr: bytes, delta: int) -> bytes:
    """An SOA record's wire form with every compression pointer (owner, MNAME, RNAME) + delta."""
    out = bytearray(rr)

    def name(pos: int) -> int:
        while True:
            length = out[pos]
            if length & 0xC0 == 0xC0:
                pointer = (((length & 0x3F) << 8) | out[pos + 1]) + delta
                out[pos : pos + 2] = (0xC000 | pointer).to_bytes(2, "big")
                return pos + 2
            if length == 0:
                return pos + 1
            pos += length + 1

    pos = name(0) + 10  # type, class, TTL, RDLENGTH
    name(name(pos))
    return bytes(out)


def _steered_records(rdtype: int, ttl: int, addresses: list[bytes]) -> tuple[bytes, ...]:
    """One record per address, each the owner (a pointer to the question name at offset 12:
    the steered name is the qname), type, class, TTL, length and the address; the part
    before the address is the same for every address of one length."""
    heads = {
        size: b"\xc0\x0c"
        + rdtype.to_bytes(2, "big")
        + b"\x00\x01"
        + ttl.to_bytes(4, "big")
        + size.to_bytes(2, "big")
        for size in {len(address) for address in addresses}
    }
    return tuple([heads[len(address)] + address for address in addresses])
