"""Query parsing on the wire, by hand: the fast path reads only what it needs.

A query is checked as strictly as RFC 1035/6891/7871 ask: exactly one question, labels of
at most 63 octets, names of at most 255, no compression pointers in the question, every
record inside the packet, at most one OPT (owned by the root), a well-formed ECS option.
"""

from __future__ import annotations

import struct

# Header flags.
QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
CD = 0x0010
OPCODE_MASK = 0x7800


def echoed_flags(opcode: int) -> int:
    """The query's header bits a reply copies: the opcode and CD, and RD on QUERY only (RFC
    1035 4.1.1 defines RD for queries; a NOTIFY or UPDATE reply carries none)."""
    return OPCODE_MASK | CD | (RD if opcode == 0 else 0)


# RCODEs.
NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
BADVERS = 16  # extended: header 0, OPT ext-rcode 1

NOTAUTH = 9
BADKEY = 17  # TSIG error (RFC 8945)

OPT_TYPE = 41
TSIG_TYPE = 250
NSID_OPTION = 3  # RFC 5001
ECS_OPTION = 8
COOKIE_OPTION = 10  # RFC 7873
TCP_KEEPALIVE_OPTION = 11  # RFC 7828
CLASS_IN = 1
TYPE_ANY = 255

_HEADER = struct.Struct("!HHHHHH")
_TYPE_CLASS = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")
_OPTION = struct.Struct("!HH")
_ECS_FIXED = struct.Struct("!HBB")


class FormatError(Exception):
    """The packet is not a well-formed DNS query."""


class Query:
    """What the responder needs from one query."""

    __slots__ = ("id", "flags", "question", "qname", "qtype", "qclass", "opcode",
                 "edns", "payload", "version", "do", "ecs", "ecs_error", "keepalive", "tsig", "nsid",
                 "cookie", "cookie_error")  # fmt: skip

    def __init__(self) -> None:
        self.edns = False
        self.payload = 512
        self.version = 0
        self.do = False
        self.ecs: tuple[int, int, bytes] | None = None  # (family, source prefix, address octets)
        self.ecs_error = False
        self.keepalive = False  # the client sent edns-tcp-keepalive (RFC 7828)
        self.nsid = False  # the client asked for the server's NSID (RFC 5001)
        self.tsig: int | None = None  # offset of the TSIG record (the last one) if signed
        self.cookie: tuple[int, int] | None = None  # (offset, length) of the COOKIE option data
        self.cookie_error = False  # the first COOKIE option has a length RFC 7873 forbids


def parse_header(wire: bytes) -> tuple[int, int, int, int, int, int]:
    return _HEADER.unpack_from(wire)


def read_name(wire: bytes, pos: int) -> int:
    """Skip a (possibly compressed) name outside the question; return the offset after it."""
    end = len(wire)
    jumped_to = -1
    hops = 0
    length = 0
    while True:
        if pos >= end:
            raise FormatError("name runs past the end of the packet")
        label = wire[pos]
        if label == 0:
            pos += 1
            break
        kind = label & 0xC0
        if kind == 0xC0:
            if pos + 1 >= end:
                raise FormatError("truncated compression pointer")
            target = ((label & 0x3F) << 8) | wire[pos + 1]
            if jumped_to < 0:
                jumped_to = pos + 2
            hops += 1
            if hops > 127 or target >= pos:
                raise FormatError("bad compression pointer")
            pos = target
            continue
        if kind:
            raise FormatError("unknown label type")
        length += label + 1
        if length > 254:
            raise FormatError("name longer than 255 octets")
        pos += label + 1
    return jumped_to if jumped_to >= 0 else pos


def parse_query(wire: bytes) -> Query:
    """Parse a query; raise FormatError for anything malformed.

    The caller has already checked ``len(wire) >= 12`` and that QR is clear.
    """
    q = Query()
    q.id, q.flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    q.opcode = (q.flags >> 11) & 0xF
    end = len(wire)
    pos = 12
    if qdcount == 0 and q.opcode == 0:
        # RFC 7873 5.4: a QUERY without a question may ask for a server cookie alone; the
        # responder decides (it is FORMERR unless there is a COOKIE option and cookies are on).
        q.qname = q.question = b""
        q.qtype = q.qclass = -1
        return _parse_records(wire, pos, ancount, nscount, arcount, q)
    if qdcount != 1:
        raise FormatError("QDCOUNT must be 1")
    while True:
        if pos >= end:
            raise FormatError("question name runs past the end of the packet")
        label = wire[pos]
        if label == 0:
            pos += 1
            break
        if label > 63:
            raise FormatError("compression or extended label in the question")
        pos += label + 1
        if pos - 12 > 254:
            raise FormatError("question name longer than 255 octets")
    if pos + 4 > end:
        raise FormatError("truncated question")
    q.qname = wire[12:pos]
    q.qtype, q.qclass = _TYPE_CLASS.unpack_from(wire, pos)
    pos += 4
    q.question = wire[12:pos]
    return _parse_records(wire, pos, ancount, nscount, arcount, q)


def _parse_records(
    wire: bytes, pos: int, ancount: int, nscount: int, arcount: int, q: Query
) -> Query:
    """The sections after the question: OPT parsed into ``q``, TSIG located, the rest skipped."""
    end = len(wire)
    for _ in range(ancount + nscount):
        pos = _skip_rr(wire, pos)
    seen_opt = False
    for _ in range(arcount):
        if q.tsig is not None:
            raise FormatError("TSIG is not the last record")  # RFC 8945 5.2
        if (
            pos < end
            and wire[pos] == 0
            and pos + 3 <= end
            and wire[pos + 1] == 0
            and wire[pos + 2] == OPT_TYPE
        ):
            if seen_opt:
                raise FormatError("more than one OPT record")
            seen_opt = True
            pos = _parse_opt(wire, pos + 1, q)
        else:
            start = pos
            pos = _skip_rr(wire, pos)
            kind = _rr_type(wire, start)
            if kind == OPT_TYPE:
                raise FormatError("OPT record not owned by the root")
            if kind == TSIG_TYPE:
                q.tsig = start
    if pos != end:
        raise FormatError("trailing bytes after the last record")
    return q


def expand_name(wire: bytes, pos: int) -> tuple[bytes, int]:
    """The name at ``pos`` written out without compression, and the offset after it."""
    end = read_name(wire, pos)  # checks pointers, loops and length first
    labels = []
    while wire[pos]:
        if wire[pos] & 0xC0:
            pos = ((wire[pos] & 0x3F) << 8) | wire[pos + 1]
            continue
        labels.append(wire[pos : pos + 1 + wire[pos]])
        pos += 1 + wire[pos]
    return b"".join(labels) + b"\0", end


def tsig_error_record(wire: bytes, pos: int, error: int) -> bytes:
    """The unsigned TSIG record of an error reply (RFC 8945 5.3.2: MAC size 0) to the TSIG
    record at ``pos``: its key and algorithm names, time signed, fudge and original ID, with
    ``error``. FormatError if that record is malformed."""
    key, at = expand_name(wire, pos)
    if at + 10 > len(wire):
        raise FormatError("truncated TSIG record")
    rdstart = at + 10
    rdend = rdstart + _RR_FIXED.unpack_from(wire, at)[3]
    algorithm, at = expand_name(wire, rdstart)
    if at + 10 > rdend:
        raise FormatError("truncated TSIG data")
    time_fudge = wire[at : at + 8]
    mac_size = (wire[at + 8] << 8) | wire[at + 9]
    at += 10 + mac_size
    if at + 6 > rdend:
        raise FormatError("truncated TSIG data")
    original_id = wire[at : at + 2]
    other_len = (wire[at + 4] << 8) | wire[at + 5]
    if at + 6 + other_len != rdend:
        raise FormatError("TSIG data of the wrong length")
    rdata = algorithm + time_fudge + b"\0\0" + original_id + _OPTION.pack(error, 0)
    return key + _RR_FIXED.pack(TSIG_TYPE, 255, 0, len(rdata)) + rdata


def _rr_type(wire: bytes, pos: int) -> int:
    pos = read_name(wire, pos)
    return (wire[pos] << 8) | wire[pos + 1]


def _skip_rr(wire: bytes, pos: int) -> int:
    pos = read_name(wire, pos)
    if pos + 10 > len(wire):
        raise FormatError("truncated resource record")
    rdlength = _RR_FIXED.unpack_from(wire, pos)[3]
    pos += 10 + rdlength
    if pos > len(wire):
        raise FormatError("record data runs past the end of the packet")
    return pos


def _parse_opt(wire: bytes, pos: int, q: Query) -> int:
    # pos is just after the root owner name.
    if pos + 10 > len(wire):
        raise FormatError("truncated OPT record")
    _type, payload, ttl, rdlength = _RR_FIXED.unpack_from(wire, pos)
    pos += 10
    rdend = pos + rdlength
    if rdend > len(wire):
        raise FormatError("OPT data runs past the end of the packet")
    q.edns = True
    # RFC 6891 6.2.5: values below 512 are treated as 512.
    q.payload = max(payload, 512)
    q.version = (ttl >> 16) & 0xFF
    q.do = bool(ttl & 0x8000)
    while pos < rdend:
        if pos + 4 > rdend:
            raise FormatError("truncated EDNS option")
        code, length = _OPTION.unpack_from(wire, pos)
        pos += 4
        if pos + length > rdend:
            raise FormatError("EDNS option runs past the OPT record")
        if code == ECS_OPTION:
            if q.ecs is not None or q.ecs_error:
                q.ecs_error = True  # RFC 7871: at most one ECS option
            else:
                q.ecs = _parse_ecs(wire[pos : pos + length])
                q.ecs_error = q.ecs is None
        elif code == TCP_KEEPALIVE_OPTION:
            q.keepalive = True
        elif code == NSID_OPTION:
            q.nsid = True  # RFC 5001 2.1: a request's payload is empty; any is ignored
        elif code == COOKIE_OPTION and q.cookie is None and not q.cookie_error:
            # RFC 7873 5.2: only the first counts; 8 octets (client cookie) or 16 to 40.
            if length == 8 or 16 <= length <= 40:
                q.cookie = (pos, length)
            else:
                q.cookie_error = True
        pos += length
    return rdend


def _parse_ecs(data: bytes) -> tuple[int, int, bytes] | None:
    """RFC 7871 section 6; None when malformed (the caller answers FORMERR)."""
    if len(data) < 4:
        return None
    family, source, scope = _ECS_FIXED.unpack_from(data)
    address = data[4:]
    if family == 1:
        max_bits = 32
    elif family == 2:
        max_bits = 128
    else:
        return None
    if source > max_bits or scope != 0:
        return None
    if len(address) != (source + 7) // 8:
        return None
    if source % 8 and address[-1] & (0xFF >> (source % 8)):
        return None  # bits set beyond SOURCE PREFIX-LENGTH
    return family, source, bytes(address)
