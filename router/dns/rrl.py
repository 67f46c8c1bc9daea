"""Response rate limiting (RRL): an authoritative server on the internet must not be a
reflector. Spoofed queries name a victim as their source; without a limit every one of them
sends the victim a reply larger than the query. RRL bounds how many identical responses go to
one client prefix per second (BCP 140 / RFC 5358 context; the scheme of NSD, Knot and BIND).

Each UDP reply is classified from its own bytes and keyed by (client prefix, class, what):

| class | key beyond the prefix | as in |
|---|---|---|
| answer (NOERROR, with or without records, referrals) | qname (lowercased) and qtype | BIND responses-per-second, NSD, Knot |
| nxdomain | the zone (the owner of the SOA in the authority section) | BIND nxdomains-per-second: random names must share one bucket |
| refused | nothing else | errors-per-second |
| error (FORMERR, SERVFAIL, NOTIMP, BADVERS...) | nothing else | errors-per-second |

A bucket holds ``rate`` tokens (one second's worth) and refills at ``rate`` per second; a reply
takes one. Without one the reply is dropped, except every ``slip``-th, which is sent truncated
(TC=1, the question only, no records) so a real client behind that prefix retries over TCP,
where no spoofing is possible (``slip`` 0: drop all; 1: truncate all).

Not limited: TCP (the handshake proves the source), and sources on the allow-list (loopback
by default: a packet from 127/8 or ::1 cannot come from outside, and it is what load tests and
monitoring send from).

The client subnet of an ECS option is not part of the key, on purpose: it is chosen by the
sender, so an attacker spoofing a victim's address could give every query another subnet and
get a bucket per subnet, which defeats the limit. The price: a large public resolver asking one
name for many client subnets from one source prefix shares one bucket per name; such
resolvers belong on the allow-list (operators know their addresses), or will pass with DNS
cookies once supported.

The table is a fixed open-addressing hash (TABLE_SLOTS rows per worker: key, tokens in
thousandths, last refill in ms, slipped count); when the probed rows are all taken the least
recently refilled is reused, so memory is bounded whatever the attack. Each worker process has
its own table: a source whose queries the kernel spreads over N workers (SO_REUSEPORT hashes
on address and port) gets up to N times the rate.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from router._jit import HOT_PATH_OPTIONS

SEND, DROP, SLIP = 0, 1, 2
CLASS_ANSWER, CLASS_NXDOMAIN, CLASS_REFUSED, CLASS_ERROR = range(4)
CLASS_NAMES = ("answer", "nxdomain", "refused", "error")
CLASSES = len(CLASS_NAMES)
# Counters per class: [limited (dropped), slipped (sent truncated)].
C_DROPPED, C_SLIPPED = 0, 1

TABLE_SLOTS = 1 << 16
_PROBES = 8
T_KEY, T_TOKENS, T_LAST, T_SLIPPED = range(4)

# params: rate per second, slip, IPv4 prefix bits, IPv6 prefix bits.
P_RATE, P_SLIP, P_V4_BITS, P_V6_BITS = range(4)
PARAMS = 4

DEFAULT_RATE = 200  # NSD's default (rrl-ratelimit); BIND's examples use 5-20, Knot's 20
DEFAULT_SLIP = 2  # NSD, Knot and BIND's default
DEFAULT_V4_BITS = 24
DEFAULT_V6_BITS = 56
DEFAULT_ALLOW = ("127.0.0.0/8", "::1/128")

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@dataclass(frozen=True)
class RrlSettings:
    rate: int = DEFAULT_RATE  # 0: off
    slip: int = DEFAULT_SLIP
    ipv4_prefix: int = DEFAULT_V4_BITS
    ipv6_prefix: int = DEFAULT_V6_BITS
    allow: tuple[str, ...] = DEFAULT_ALLOW


class RrlState:
    """One worker's table, parameters, allow-list and counters, as numba arrays."""

    def __init__(self, settings: RrlSettings, counters: np.ndarray | None = None) -> None:
        self.settings = settings
        self.table = np.zeros((TABLE_SLOTS, 4), dtype=np.int64)
        self.params = np.array(
            [settings.rate, settings.slip, settings.ipv4_prefix, settings.ipv6_prefix],
            dtype=np.int64,
        )
        self.counters = counters if counters is not None else np.zeros((CLASSES, 2), dtype=np.int64)
        self.allow_v4, self.allow_v6 = allow_arrays(settings.allow)

    @property
    def enabled(self) -> bool:
        return self.settings.rate > 0

    def apply(self, reply: bytes, source: str) -> tuple[bytes | None, str | None]:
        """The UDP ``reply`` to ``source`` as rate limiting lets it go, and what it did:
        (reply, None), (its truncated form, "slipped") or (None, "dropped"). For the replies
        Python builds (the compiled loop calls ``decide`` itself), on the same table."""
        if not self.enabled:
            return reply, None
        value = int(ipaddress.ip_address(source))
        v6 = ":" in source
        hi, lo = (value >> 64, value & (2**64 - 1)) if v6 else (0, value)
        out = np.frombuffer(reply, dtype=np.uint8).copy()
        now_ms = time.monotonic_ns() // 1_000_000
        action = decide(out, len(reply), v6, np.uint64(hi), np.uint64(lo), now_ms, self.table,
                        self.params, self.allow_v4, self.allow_v6, self.counters)  # fmt: skip
        if action == DROP:
            return None, "dropped"
        if action == SLIP:
            return out[: truncate(out, len(reply))].tobytes(), "slipped"
        return reply, None


def allow_arrays(prefixes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The allow-list as (N, 2) uint64 [network, mask] for IPv4 and (N, 4) [hi, lo, mask hi,
    mask lo] for IPv6."""
    v4, v6 = [], []
    for text in prefixes:
        net = ipaddress.ip_network(text, strict=False)
        value, mask = int(net.network_address), int(net.netmask)
        if net.version == 4:
            v4.append((value, mask))
        else:
            v6.append((value >> 64, value & (2**64 - 1), mask >> 64, mask & (2**64 - 1)))
    return (
        np.array(v4, dtype=np.uint64).reshape(-1, 2),
        np.array(v6, dtype=np.uint64).reshape(-1, 4),
    )


@njit(**HOT_PATH_OPTIONS)
def _lower(octet):
    return octet + 32 if 65 <= octet <= 90 else octet


@njit(**HOT_PATH_OPTIONS)
def _mix(h, value):
    return (h ^ np.uint64(value)) * _FNV_PRIME


@njit(**HOT_PATH_OPTIONS)
def _hash_name(out, length, pos, h):
    """``h`` mixed with the name at ``pos`` of ``out[:length]``, lowercased, following
    compression pointers; returns (hash, the end of the name where it starts) or (h, -1)."""
    end = -1
    for _ in range(128):  # bounded: a pointer loop cannot spin
        if pos >= length:
            return h, -1
        label = np.int64(out[pos])
        if label == 0:
            if end < 0:
                end = pos + 1
            return _mix(h, 0), end
        if label >= 0xC0:
            if pos + 1 >= length:
                return h, -1
            if end < 0:
                end = pos + 2
            pos = ((label & 0x3F) << 8) | np.int64(out[pos + 1])
            continue
        if label > 63 or pos + 1 + label > length:
            return h, -1
        h = _mix(h, label)
        for k in range(pos + 1, pos + 1 + label):
            h = _mix(h, _lower(np.int64(out[k])))
        pos += 1 + label
    return h, -1


@njit(**HOT_PATH_OPTIONS)
def _u16(out, pos):
    return (np.int64(out[pos]) << 8) | np.int64(out[pos + 1])


@njit(**HOT_PATH_OPTIONS)
def _skip_rr(out, length, pos):
    _, end = _hash_name(out, length, pos, _FNV_OFFSET)
    if end < 0 or end + 10 > length:
        return -1
    return end + 10 + _u16(out, end + 8)


@njit(**HOT_PATH_OPTIONS)
def _classify(out, length, h):
    """(class, key hash) of the reply ``out[:length]``, ``h`` already holding the prefix."""
    rcode = np.int64(out[3]) & 0xF
    qdcount = _u16(out, 4)
    if rcode == 5:
        return CLASS_REFUSED, _mix(h, CLASS_REFUSED)
    if rcode != 0 and rcode != 3:
        return CLASS_ERROR, _mix(h, CLASS_ERROR)
    if qdcount != 1:
        return CLASS_ERROR, _mix(h, CLASS_ERROR)
    if rcode == 0:
        k, qend = _hash_name(out, length, 12, _mix(h, CLASS_ANSWER))
        if qend < 0 or qend + 2 > length:
            return CLASS_ERROR, _mix(h, CLASS_ERROR)
        return CLASS_ANSWER, _mix(k, _u16(out, qend))
    # NXDOMAIN: keyed by the zone, the owner of the first authority record (the SOA).
    _, qend = _hash_name(out, length, 12, h)
    if qend < 0:
        return CLASS_ERROR, _mix(h, CLASS_ERROR)
    pos = qend + 4
    for _ in range(_u16(out, 6)):
        pos = _skip_rr(out, length, pos)
        if pos < 0:
            return CLASS_ERROR, _mix(h, CLASS_ERROR)
    if _u16(out, 8) == 0:
        k, _ = _hash_name(out, length, 12, _mix(h, CLASS_NXDOMAIN))
        return CLASS_NXDOMAIN, k
    k, end = _hash_name(out, length, pos, _mix(h, CLASS_NXDOMAIN))
    if end < 0:
        return CLASS_ERROR, _mix(h, CLASS_ERROR)
    return CLASS_NXDOMAIN, k


@njit(**HOT_PATH_OPTIONS)
def _allowed(src_v6, hi, lo, allow_v4, allow_v6):
    if src_v6:
        for i in range(allow_v6.shape[0]):
            if (hi & allow_v6[i, 2]) == allow_v6[i, 0] and (lo & allow_v6[i, 3]) == allow_v6[i, 1]:
                return True
        if hi != 0 or (lo >> np.uint64(32)) != np.uint64(0xFFFF):
            return False
        lo = lo & np.uint64(0xFFFFFFFF)  # an IPv4-mapped source is an IPv4 client
    for i in range(allow_v4.shape[0]):
        if (lo & allow_v4[i, 1]) == allow_v4[i, 0]:
            return True
    return False


@njit(**HOT_PATH_OPTIONS)
def _prefix_hash(src_v6, hi, lo, params):
    if src_v6:
        bits = params[P_V6_BITS]
        if bits >= 64:
            keep = bits - 64
            mask_lo = np.uint64(0) if keep == 0 else ~np.uint64(0) << np.uint64(64 - keep)
            return _mix(_mix(_mix(_FNV_OFFSET, 6), hi), lo & mask_lo)
        mask_hi = np.uint64(0) if bits == 0 else ~np.uint64(0) << np.uint64(64 - bits)
        return _mix(_mix(_FNV_OFFSET, 6), hi & mask_hi)
    bits = params[P_V4_BITS]
    mask = (
        np.uint64(0)
        if bits == 0
        else (np.uint64(0xFFFFFFFF) << np.uint64(32 - bits)) & np.uint64(0xFFFFFFFF)
    )
    return _mix(_mix(_FNV_OFFSET, 4), lo & mask)


@njit(**HOT_PATH_OPTIONS)
def decide(out, length, src_v6, hi, lo, now_ms, table, params, allow_v4, allow_v6, counters):
    """SEND, DROP or SLIP for the UDP reply ``out[:length]`` to the source (``src_v6``,
    ``hi``, ``lo``: IPv4 in ``lo``) at ``now_ms`` (a monotonic clock in milliseconds)."""
    rate = params[P_RATE]
    if rate <= 0 or length < 12 or _allowed(src_v6, hi, lo, allow_v4, allow_v6):
        return SEND
    cls, key = _classify(out, length, _prefix_hash(src_v6, hi, lo, params))
    key = np.int64(key | np.uint64(1))  # 0 marks a free row
    mask = table.shape[0] - 1
    start = np.int64(key >> np.int64(17)) & mask
    row = -1
    oldest = start
    for p in range(_PROBES):
        r = (start + p) & mask
        if table[r, T_KEY] == key:
            row = r
            break
        if table[r, T_KEY] == 0:
            row = r
            table[r, T_KEY] = key
            table[r, T_TOKENS] = rate * 1000
            table[r, T_LAST] = now_ms
            table[r, T_SLIPPED] = 0
            break
        if table[r, T_LAST] < table[oldest, T_LAST]:
            oldest = r
    if row < 0:  # every probed row taken by another key: reuse the stalest
        row = oldest
        table[row, T_KEY] = key
        table[row, T_TOKENS] = rate * 1000
        table[row, T_LAST] = now_ms
        table[row, T_SLIPPED] = 0
    elapsed = now_ms - table[row, T_LAST]
    if elapsed > 0:
        table[row, T_TOKENS] = min(rate * 1000, table[row, T_TOKENS] + elapsed * rate)
        table[row, T_LAST] = now_ms
    if table[row, T_TOKENS] >= 1000:
        table[row, T_TOKENS] -= 1000
        return SEND
    slip = params[P_SLIP]
    if slip > 0:
        table[row, T_SLIPPED] += 1
        if table[row, T_SLIPPED] >= slip:
            table[row, T_SLIPPED] = 0
            counters[cls, C_SLIPPED] += 1
            return SLIP
    counters[cls, C_DROPPED] += 1
    return DROP


@njit(**HOT_PATH_OPTIONS)
def truncate(out, length):
    """Turn the reply ``out[:length]`` into its slip form in place: TC=1, the question only,
    no records (the client retries over TCP); returns the new length."""
    if _u16(out, 4) != 1:
        end = 12
    else:
        _, end = _hash_name(out, length, 12, _FNV_OFFSET)
        end = 12 if end < 0 or end + 4 > length else end + 4
    out[2] = out[2] | 0x02
    for i in range(6, 12):
        out[i] = 0
    if end == 12:
        out[4] = 0
        out[5] = 0
    return end
