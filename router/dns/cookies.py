"""DNS Cookies (RFC 7873) with interoperable server cookies (RFC 9018).

A client sends an 8-octet client cookie; the reply carries it back with a server cookie, which
the client returns from then on. A returned server cookie that this service made proves the
query came from the address it claims (a spoofer never sees the reply), so rate limiting
leaves such clients alone (router/dns/rrl.py).

The server cookie is RFC 9018's version 1, 16 octets: version (1), three reserved octets,
a timestamp (seconds, serial arithmetic modulo 2**32), and SipHash-2-4 over client cookie |
version | reserved | timestamp | client address, keyed with a 128-bit secret. Every instance
of the service given the same secret accepts the others' cookies; during a rotation the
previous secret is still accepted (cookies made with it are replaced by fresh ones).

What a query gets (RFC 7873 5.2, RFC 9018 4.3):

| COOKIE option | reply |
|---|---|
| none | as without cookies |
| malformed (not 8 octets, nor 16 to 40) | FORMERR |
| client cookie only | normal answer, a fresh server cookie |
| server cookie not ours, older than an hour, more than 5 minutes ahead | normal answer, a fresh one |
| valid, under half an hour old | normal answer, the same cookie echoed |
| valid, older (or made with the previous secret) | normal answer, a fresh one |

Only the first COOKIE option of a query counts (RFC 7873 5.2); the rest are ignored.

``judge`` is compiled: the fast path (router/dns/fast_answer.py) calls it inline, and the
general path (router/dns/engine.py) calls ``reply_option``, which calls the same function.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Sequence

import numpy as np
from numba import njit

from router._jit import HOT_PATH_OPTIONS

CLIENT_LEN = 8
SERVER_LEN = 16  # RFC 9018 version 1
REPLY_LEN = CLIENT_LEN + SERVER_LEN
SECRET_LEN = 16
VERSION = 1
LIFETIME_S = 3600  # RFC 9018 4.3: older than an hour is not accepted
SKEW_S = 300  # nor more than five minutes in the future
RENEW_AFTER_S = 1800  # a valid cookie older than this is replaced by a fresh one

# Verdicts on a query's COOKIE option. A valid server cookie: VALID or RENEW.
NONE, CLIENT_ONLY, BAD, VALID, RENEW = range(5)
VERDICT_NAMES = ("none", "client_only", "bad", "valid", "renew")

# The state array (uint64) a worker answers with: on, the time now (unix seconds, written by
# whoever answers), the current secret (SipHash k0, k1), whether there is a previous one, and it.
S_ON, S_NOW, S_K0, S_K1, S_PREV, S_PK0, S_PK1 = range(7)
STATE_FIELDS = 7

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def state_array(secrets: Sequence[bytes]) -> np.ndarray:
    """The state for ``secrets`` (current first, then the previous one if any; none: off)."""
    state = np.zeros(STATE_FIELDS, dtype=np.uint64)
    if not secrets:
        return state
    if len(secrets) > 2 or any(len(s) != SECRET_LEN for s in secrets):
        raise ValueError("one or two secrets of 16 octets")
    state[S_ON] = 1
    state[S_NOW] = int(time.time())
    state[S_K0] = int.from_bytes(secrets[0][:8], "little")
    state[S_K1] = int.from_bytes(secrets[0][8:], "little")
    if len(secrets) == 2:
        state[S_PREV] = 1
        state[S_PK0] = int.from_bytes(secrets[1][:8], "little")
        state[S_PK1] = int.from_bytes(secrets[1][8:], "little")
    return state


def random_secret() -> bytes:
    return os.urandom(SECRET_LEN)


@njit(inline="always", **HOT_PATH_OPTIONS)
def _rotl(x, b):
    return (x << np.uint64(b)) | (x >> np.uint64(64 - b))


@njit(inline="always", **HOT_PATH_OPTIONS)
def _sip_round(v0, v1, v2, v3):
    """One SipRound."""
    v0 = (v0 + v1) & _M64
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _M64
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _M64
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _M64
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


@njit(inline="always", **HOT_PATH_OPTIONS)
def _start(k0, k1):
    """SipHash's initial state for the key (k0, k1)."""
    return (k0 ^ np.uint64(0x736F6D6570736575), k1 ^ np.uint64(0x646F72616E646F6D),
            k0 ^ np.uint64(0x6C7967656E657261), k1 ^ np.uint64(0x7465646279746573))  # fmt: skip


@njit(inline="always", **HOT_PATH_OPTIONS)
def _absorb(v0, v1, v2, v3, m):
    """One 8-octet message word (little-endian) through two SipRounds."""
    v3 ^= m
    for _ in range(2):
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    return v0 ^ m, v1, v2, v3


@njit(inline="always", **HOT_PATH_OPTIONS)
def _finish(v0, v1, v2, v3):
    """The four finalization rounds and the 64-bit result."""
    v2 ^= np.uint64(0xFF)
    for _ in range(4):
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


@njit(inline="always", **HOT_PATH_OPTIONS)
def _word(data, at):
    """The 8 octets ``data[at:at + 8]`` as a little-endian word (SipHash's message order)."""
    m = np.uint64(0)
    for j in range(8):
        m |= np.uint64(data[at + j]) << np.uint64(8 * j)
    return m


@njit(**HOT_PATH_OPTIONS)
def siphash24(k0, k1, data, length):
    """SipHash-2-4 of ``data[:length]`` with the key (k0, k1) (its two little-endian halves)."""
    v0, v1, v2, v3 = _start(k0, k1)
    blocks = length // 8
    for b in range(blocks + 1):
        if b < blocks:
            m = _word(data, b * 8)
        else:  # the last block: the remaining octets and the length in the top one
            m = np.uint64(0)
            for j in range(length - blocks * 8):
                m |= np.uint64(data[b * 8 + j]) << np.uint64(8 * j)
            m |= np.uint64(length & 0xFF) << np.uint64(56)
        v0, v1, v2, v3 = _absorb(v0, v1, v2, v3, m)
    return _finish(v0, v1, v2, v3)


@njit(inline="always", **HOT_PATH_OPTIONS)
def _byteswap(x):
    out = np.uint64(0)
    for j in range(8):
        out = (out << np.uint64(8)) | ((x >> np.uint64(8 * j)) & np.uint64(0xFF))
    return out


@njit(**HOT_PATH_OPTIONS)
def server_hash(k0, k1, client, client_at, head, v6, hi, lo):
    """RFC 9018 4.4: the hash of client cookie (``client[client_at:client_at + 8]``) | version,
    reserved and timestamp (``head``, the 8 octets big-endian as sent) | client address.

    ``siphash24`` over that message, its 8-octet words formed in registers: no buffer, so the
    fast path allocates nothing per query (tests/test_dns_cookies.py: RFC 9018 A.1-A.4, both
    families)."""
    v0, v1, v2, v3 = _start(k0, k1)
    v0, v1, v2, v3 = _absorb(v0, v1, v2, v3, _word(client, client_at))
    v0, v1, v2, v3 = _absorb(v0, v1, v2, v3, _byteswap(head))
    if v6:  # 32 octets: two more words, then a last block of the length alone
        v0, v1, v2, v3 = _absorb(v0, v1, v2, v3, _byteswap(hi))
        v0, v1, v2, v3 = _absorb(v0, v1, v2, v3, _byteswap(lo))
        last = np.uint64(32) << np.uint64(56)
    else:  # 20 octets: the last block holds the 4 address octets and the length
        last = (_byteswap(lo) >> np.uint64(32)) | (np.uint64(20) << np.uint64(56))
    v0, v1, v2, v3 = _absorb(v0, v1, v2, v3, last)
    return _finish(v0, v1, v2, v3)


@njit(**HOT_PATH_OPTIONS)
def judge(pkt, at, length, v6, hi, lo, state):
    """(verdict, timestamp, hash) for the COOKIE option data ``pkt[at:at + length]`` (a length
    the parser accepted: 8, or 16 to 40) from the client address (v6, hi, lo). With a fresh
    cookie to send (CLIENT_ONLY, BAD, RENEW) its timestamp and hash; for VALID, zeros (the
    query's own cookie is echoed)."""
    now = state[S_NOW] & np.uint64(0xFFFFFFFF)
    verdict = CLIENT_ONLY
    if length == REPLY_LEN and pkt[at + 8] == VERSION:
        head = np.uint64(0)
        for j in range(8):
            head = (head << np.uint64(8)) | np.uint64(pkt[at + 8 + j])
        stamp = head & np.uint64(0xFFFFFFFF)
        # Serial arithmetic (RFC 1982): the age is the signed 32-bit difference.
        age = np.int64((now - stamp) & np.uint64(0xFFFFFFFF))
        if age >= 1 << 31:
            age -= 1 << 32
        verdict = BAD
        if -SKEW_S <= age <= LIFETIME_S:
            sent = np.uint64(0)
            for j in range(8):
                sent |= np.uint64(pkt[at + 16 + j]) << np.uint64(8 * j)
            if server_hash(state[S_K0], state[S_K1], pkt, at, head, v6, hi, lo) == sent:
                verdict = RENEW if age >= RENEW_AFTER_S else VALID
            elif (
                state[S_PREV]
                and server_hash(state[S_PK0], state[S_PK1], pkt, at, head, v6, hi, lo) == sent
            ):
                verdict = RENEW
    elif length != CLIENT_LEN:
        verdict = BAD  # a server cookie of another length or version: not one of ours
    if verdict == VALID:
        return verdict, np.uint64(0), np.uint64(0)
    head = (np.uint64(VERSION) << np.uint64(56)) | now
    return verdict, now, server_hash(state[S_K0], state[S_K1], pkt, at, head, v6, hi, lo)


def make_server_cookie(secret: bytes, client: bytes, source: str, at: int) -> bytes:
    """The 16-octet server cookie ``secret`` makes for the client cookie ``client`` from
    ``source`` at unix time ``at`` (what a router of the service would send; tests, benchmarks)."""
    state = state_array([secret])
    state[S_NOW] = at
    v6, hi, lo = _split(source)
    _verdict, stamp, digest = judge(
        np.frombuffer(client, np.uint8), 0, CLIENT_LEN, v6, hi, lo, state
    )
    return (
        bytes((VERSION, 0, 0, 0))
        + int(stamp).to_bytes(4, "big")
        + int(digest).to_bytes(8, "little")
    )


def _split(source: str) -> tuple[bool, np.uint64, np.uint64]:
    address = ipaddress.ip_address(source.split("%", 1)[0])
    value = int(address)
    if address.version == 6:
        return True, np.uint64(value >> 64), np.uint64(value & 0xFFFFFFFFFFFFFFFF)
    return False, np.uint64(0), np.uint64(value)


def reply_option(
    packet: bytes, at: int, length: int, source: str, state: np.ndarray
) -> tuple[int, bytes]:
    """The general path's (verdict, COOKIE option data for the reply), as the fast path writes it."""
    state[S_NOW] = int(time.time())
    pkt = np.frombuffer(packet, dtype=np.uint8)
    verdict, stamp, digest = judge(pkt, at, length, *_split(source), state)
    client = packet[at : at + CLIENT_LEN]
    if verdict == VALID:
        return verdict, client + packet[at + CLIENT_LEN : at + REPLY_LEN]
    server = (
        bytes((VERSION, 0, 0, 0))
        + int(stamp).to_bytes(4, "big")
        + int(digest).to_bytes(8, "little")
    )
    return verdict, client + server
