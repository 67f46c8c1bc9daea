"""DNSSEC signing (RFC 4033-4035): RRSIGs made ahead of queries, the NSEC chain of a zone.

Nothing here runs per query. Static RRsets are signed when the answer book is built;
steered answer sets when a routing table is built (``SteeredSigner``, cached by content so
an incremental table signs only the sets it has not seen). ECDSA signatures are
deterministic (RFC 6979) and inception and expiry are derived from the content and a
coarse clock, so every router instance signs identically.

Keys are duck-typed (router/config/dnssec_keys.py ``DnssecKey``): ``zone``, ``algorithm``,
``key_tag``, ``dnskey``, ``private_key``, ``published(now)``, ``signs(now)``,
``signs_keys()``, ``signs_data()``.
"""

from __future__ import annotations

import copy
import hashlib
import struct
from bisect import bisect_right
from dataclasses import dataclass, field, replace

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.NSEC
import dns.rdtypes.ANY.RRSIG
import dns.rrset
import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ECDSAP256SHA256 = 13
ED25519 = 15
RRSIG = dns.rdatatype.RRSIG
NSEC = dns.rdatatype.NSEC
DNSKEY = dns.rdatatype.DNSKEY
IN = dns.rdataclass.IN
_ECDSA = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
# Inception is rounded down to this, so instances started minutes apart sign alike.
CLOCK_STEP_S = 3600


@dataclass(frozen=True)
class SigningTimes:
    """When signatures made now start and end (RFC 4034 3.1.5)."""

    now: float
    validity_s: float
    backdate_s: float
    jitter: float  # share of the validity the expiry is spread over, by content

    @property
    def inception(self) -> int:
        return int(self.now // CLOCK_STEP_S * CLOCK_STEP_S - self.backdate_s)

    def expiration(self, content: bytes) -> int:
        spread = int.from_bytes(hashlib.blake2b(content, digest_size=4).digest(), "big") / 2**32
        return int(self.inception + self.backdate_s + self.validity_s * (1 - self.jitter * spread))

    @property
    def earliest_expiry(self) -> float:
        """The soonest ``expiration`` any content can get (its spread is below 1)."""
        return self.inception + self.backdate_s + self.validity_s * (1 - self.jitter)


def label_count(owner: bytes) -> int:
    """RFC 4034 3.1.3: labels of the owner, not counting the root or a leading ``*``."""
    count = 0
    pos = 0
    while owner[pos]:
        count += 1
        pos += owner[pos] + 1
    if owner[:2] == b"\x01*":
        count -= 1
    return count


def _raw_signature(key, data: bytes) -> bytes:  # noqa: ANN001
    if key.algorithm == ECDSAP256SHA256:
        r, s = decode_dss_signature(key.private_key.sign(data, _ECDSA))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return key.private_key.sign(data)  # Ed25519 (RFC 8080): the raw 64 octets


def sign_wire(
    key, times: SigningTimes, owner: bytes, rdtype: int, ttl: int, rdatas: list[bytes]
) -> bytes:  # noqa: ANN001
    """The RRSIG rdata by ``key`` over the RRset ``owner`` (canonical wire), ``rdtype``,
    ``ttl`` and the canonical rdatas (RFC 4034 3.1.8.1, 6.3: sorted, duplicates dropped)."""
    signer = key.zone.canonicalize().to_wire()
    rrs = sorted(set(rdatas))
    head = owner + struct.pack("!HHI", rdtype, IN, ttl)
    signed_rrs = b"".join(head + struct.pack("!H", len(r)) + r for r in rrs)
    expiration = times.expiration(owner + struct.pack("!H", rdtype) + signed_rrs)
    prefix = (
        struct.pack(
            "!HBBIIIH",
            rdtype,
            key.algorithm,
            label_count(owner),
            ttl,
            expiration,
            times.inception,
            key.key_tag,
        )  # fmt: skip
        + signer
    )
    return prefix + _raw_signature(key, prefix + signed_rrs)


def rrsig_rdata(wire: bytes) -> dns.rdtypes.ANY.RRSIG.RRSIG:
    return dns.rdata.from_wire(IN, RRSIG, wire, 0, len(wire))


@dataclass
class ZoneSigner:
    """One zone's keys at one time: signs its RRsets (dnspython objects, at load)."""

    origin: dns.name.Name
    keys: list  # every key of the zone (published or not)
    times: SigningTimes
    dnskey_ttl: int
    _cache: dict = field(default_factory=dict)

    def published(self) -> list:
        return [k for k in self.keys if k.published(self.times.now)]

    def data_keys(self) -> list:
        """The keys that sign zone data now: active ZSKs or CSKs."""
        return [k for k in self.keys if k.signs_data() and k.signs(self.times.now)]

    def key_signers(self) -> list:
        """The keys that sign the DNSKEY set: every published KSK or CSK (so during a
        rollover the set validates from the old DS and from the new one)."""
        return [k for k in self.published() if k.signs_keys()]

    def dnskey_rrset(self) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(self.origin, IN, DNSKEY)
        for key in self.published():
            rrset.add(key.dnskey, self.dnskey_ttl)
        return rrset

    def sign(self, rrset: dns.rrset.RRset) -> dns.rrset.RRset:
        """The RRSIG RRset of ``rrset`` (every signing key of its kind)."""
        owner = rrset.name.canonicalize().to_wire()
        rdatas = tuple(sorted(r.to_digestable(self.origin) for r in rrset))
        cache_key = (owner, rrset.rdtype, rrset.ttl, rdatas)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        keys = self.key_signers() if rrset.rdtype == DNSKEY else self.data_keys()
        out = dns.rrset.RRset(rrset.name, IN, RRSIG, rrset.rdtype)
        for key in keys:
            out.add(
                rrsig_rdata(
                    sign_wire(key, self.times, owner, rrset.rdtype, rrset.ttl, list(rdatas))
                ),
                rrset.ttl,
            )
        self._cache[cache_key] = out
        return out


def canonical_key(name_wire: bytes) -> tuple[bytes, ...]:
    """The sort key of RFC 4034 6.1: labels right to left, each lower-cased."""
    labels = []
    pos = 0
    while name_wire[pos]:
        length = name_wire[pos]
        labels.append(name_wire[pos + 1 : pos + 1 + length].lower())
        pos += length + 1
    return tuple(reversed(labels))


@dataclass
class NsecChain:
    """A zone's NSEC records in canonical order (RFC 4034 4, 6.1)."""

    origin: dns.name.Name
    names: list[dns.name.Name]  # canonical order; the apex first
    keys: list[tuple[bytes, ...]]
    records: list[dns.rrset.RRset]  # the NSEC RRset of each name

    @classmethod
    def build(
        cls, origin: dns.name.Name, types_at: dict[dns.name.Name, set[int]], ttl: int
    ) -> NsecChain:
        """``types_at``: every authoritative name (and delegation point) with its types."""
        ordered = sorted(types_at, key=lambda n: canonical_key(n.canonicalize().to_wire()))
        records = []
        for i, name in enumerate(ordered):
            following = ordered[(i + 1) % len(ordered)]
            types = sorted(types_at[name] | {RRSIG, NSEC})
            windows = dns.rdtypes.ANY.NSEC.Bitmap.from_rdtypes(types)
            rdata = dns.rdtypes.ANY.NSEC.NSEC(IN, NSEC, following, windows)
            records.append(dns.rrset.from_rdata(name, ttl, rdata))
        keys = [canonical_key(n.canonicalize().to_wire()) for n in ordered]
        return cls(origin, ordered, keys, records)

    def index_of(self, name_wire: bytes) -> int:
        """The record owned by ``name_wire`` or, if none is, the one covering it."""
        return max(bisect_right(self.keys, canonical_key(name_wire)) - 1, 0)


@dataclass(frozen=True)
class TableSignatures:
    """The RRSIG records of every steered answer a routing table can give, as arrays the
    workers map: ``slot[entry, answer_set]`` (-1: none) picks ``data[off[slot]:off[slot + 1]]``,
    ``count[slot]`` records (one per signing key), each owned by a pointer to the question."""

    slot: np.ndarray  # int32[E, S]
    off: np.ndarray  # int64[M + 1]
    data: np.ndarray  # uint8
    count: np.ndarray  # int64[M]

    @classmethod
    def empty(cls) -> TableSignatures:
        """No signatures; read-only like mapped arrays (the compiled UDP loop is typed on it)."""
        arrays = (np.full((0, 0), -1, dtype=np.int32), np.zeros(1, dtype=np.int64),
                  np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.int64))  # fmt: skip
        for array in arrays:
            array.flags.writeable = False
        return cls(*arrays)

    def records(self, entry: int, answer_set: int) -> tuple[bytes, int] | None:
        if entry >= self.slot.shape[0] or answer_set >= self.slot.shape[1]:
            return None
        slot = int(self.slot[entry, answer_set])
        if slot < 0:
            return None
        return self.data[self.off[slot] : self.off[slot + 1]].tobytes(), int(self.count[slot])


KEEP_TABLES = 16
KEEP_UNUSED_SETS = 4096
# The head of each pre-encoded steered record: owner pointer, type, class, TTL, RDLENGTH.
STEERED_HEAD = 12


class SteeredSigner:
    """Signs the steered answer sets of routing tables, each distinct set once.

    ``entries``: the answer book's steered entries (``owner``, ``rdtype``, ``ttl``,
    ``policy``, ``records``); ``signers``: the zone signer of each (None: unsigned zone).
    A set signed for one table is kept, by its content, for the next; it is signed again once
    less than ``resign_before_s`` of its validity is left."""

    def __init__(
        self, entries: list, signers: list[ZoneSigner | None], resign_before_s: float
    ) -> None:
        self.entries = entries
        self.signers = signers
        self.resign_before_s = resign_before_s
        self._cache: dict[
            tuple[int, bytes], tuple[bytes, int, int]
        ] = {}  # -> (records, count, expiry)
        self._used_at: dict[tuple[int, bytes], int] = {}  # the table count a set was last used at
        self._tables = 0
        # The last table's signatures, the rows they were made for and each slot's expiry.
        self._previous: TableSignatures | None = None
        self._previous_keys = np.zeros(0, dtype=np.void)
        self._previous_expiry = np.zeros(0, dtype=np.int64)
        self.signed_last = 0  # signatures made by the last sign_table (not found in the cache)

    def sign_table(self, group_set: np.ndarray, set_nodes: np.ndarray, split_start: np.ndarray,
                   split_set: np.ndarray, now: float) -> TableSignatures:  # fmt: skip
        """Signatures for every (steered entry, answer set) the table can answer with.

        What the last table had is matched by row in numpy and copied from its arrays; only
        the pairs it did not have are looked up one by one (in the cache of earlier tables)
        or signed."""
        sets = set_nodes.shape[0]
        rows = np.ascontiguousarray(set_nodes)
        keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * max(rows.shape[1], 1)))).ravel()
        previous_row = self._match_previous(keys)
        slot = np.full((len(self.entries), sets), -1, dtype=np.int32)
        copied: list[tuple[int, np.ndarray, np.ndarray]] = []  # (entry, sets, old slots)
        fresh: list[
            tuple[int, list[int], list[tuple[bytes, int, int]]]
        ] = []  # (entry, sets, signed)
        made = 0
        used_by_policy: dict[int, np.ndarray] = {}
        for e, entry in enumerate(self.entries):
            signer = self.signers[e]
            if signer is None:
                continue
            used = used_by_policy.get(entry.policy)
            if used is None:
                used = _sets_used(group_set[entry.policy], split_start, split_set, sets)
                used_by_policy[entry.policy] = used
            old = np.full(len(used), -1, dtype=np.int64)
            if self._previous is not None and len(used):
                rows_before = previous_row[used]
                matched = rows_before >= 0
                old[matched] = self._previous.slot[e, rows_before[matched]]
                known = old >= 0
                fresh_enough = self._previous_expiry[old[known]] - now >= self.resign_before_s
                old[np.flatnonzero(known)[~fresh_enough]] = -1
            keep = old >= 0
            copied.append((e, used[keep], old[keep]))
            times = replace(signer.times, now=now)
            others = used[~keep].tolist()
            signed = []
            for s in others:
                cache_key = (e, keys[s].tobytes())
                cached = self._cache.get(cache_key)
                if cached is None or cached[2] - now < self.resign_before_s:
                    cached = self._sign(entry, signer, times, rows[s])
                    self._cache[cache_key] = cached
                    made += 1
                self._used_at[cache_key] = self._tables
                signed.append(cached)
            fresh.append((e, others, signed))
        # Slots: the copied ones first (entry by entry), then the fresh ones.
        at = 0
        for e, sets_, _ in copied:
            slot[e, sets_] = np.arange(at, at + len(sets_), dtype=np.int32)
            at += len(sets_)
        for e, sets_, _ in fresh:
            slot[e, sets_] = np.arange(at, at + len(sets_), dtype=np.int32)
            at += len(sets_)
        old_slots = (
            np.concatenate([c[2] for c in copied]) if copied else np.zeros(0, dtype=np.int64)
        )
        signed_all = [item for _, _, signed in fresh for item in signed]
        signatures = self._assemble(slot, old_slots, signed_all)
        expiry = np.concatenate([self._previous_expiry[old_slots] if len(old_slots) else np.zeros(0, dtype=np.int64),
                                 np.array([c[2] for c in signed_all], dtype=np.int64)])  # fmt: skip
        self.signed_last = made
        self._tables += 1
        self._previous, self._previous_keys, self._previous_expiry = signatures, keys.copy(), expiry
        if len(self._cache) > 2 * at + KEEP_UNUSED_SETS:
            # Bounded: sets no table looked up in the last KEEP_TABLES go (those still in
            # service are copied from the last table, not looked up).
            for key in [k for k, t in self._used_at.items() if t < self._tables - KEEP_TABLES]:
                del self._cache[key], self._used_at[key]
        return signatures

    def _match_previous(self, keys: np.ndarray) -> np.ndarray:
        """For each row of the new table, the row of the last table with the same nodes (-1)."""
        before = self._previous_keys
        if (
            self._previous is None
            or len(before) == 0
            or len(keys) == 0
            or before.dtype != keys.dtype
        ):
            return np.full(len(keys), -1, dtype=np.int64)
        order = np.argsort(before, kind="stable")
        ordered = before[order]
        at = np.minimum(np.searchsorted(ordered, keys), len(ordered) - 1)
        return np.where(ordered[at] == keys, order[at], -1)

    def _assemble(self, slot: np.ndarray, old_slots: np.ndarray, signed: list) -> TableSignatures:
        """The arrays: the copied slots' bytes gathered from the last table, then the signed."""
        if len(old_slots):
            prev = self._previous
            assert prev is not None
            starts = prev.off[old_slots]
            sizes = prev.off[old_slots + 1] - starts
            all_sizes = np.diff(prev.off)
            if len(all_sizes) and (all_sizes == all_sizes[0]).all():
                # Every piece the same size (one key per zone: the common case): rows of a
                # matrix, gathered in one call.
                old_data = prev.data.reshape(-1, int(all_sizes[0]))[old_slots].ravel()
            else:
                view = memoryview(prev.data)
                old_data = np.frombuffer(b"".join([view[a:b] for a, b in zip(starts.tolist(), (starts + sizes).tolist())]),
                                         dtype=np.uint8)  # fmt: skip
            old_counts = prev.count[old_slots]
        else:
            sizes = np.zeros(0, dtype=np.int64)
            old_data, old_counts = np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.int64)
        all_sizes = np.concatenate([sizes, np.array([len(c[0]) for c in signed], dtype=np.int64)])
        off = np.zeros(len(all_sizes) + 1, dtype=np.int64)
        off[1:] = np.cumsum(all_sizes)
        data = np.concatenate(
            [old_data, np.frombuffer(b"".join(c[0] for c in signed), dtype=np.uint8)]
        )
        count = np.concatenate([old_counts, np.array([c[1] for c in signed], dtype=np.int64)])
        return TableSignatures(slot, off, data.astype(np.uint8), count.astype(np.int64))

    def _sign(
        self, entry, signer: ZoneSigner, times: SigningTimes, row: np.ndarray
    ) -> tuple[bytes, int, int]:  # noqa: ANN001
        rdatas = [entry.records[int(n)][STEERED_HEAD:] for n in row if n >= 0]
        out = b""
        count = 0
        expiry = 2**32
        for key in signer.data_keys():
            rdata = sign_wire(key, times, entry.owner, entry.rdtype, entry.ttl, rdatas)
            out += b"\xc0\x0c" + struct.pack("!HHIH", RRSIG, IN, entry.ttl, len(rdata)) + rdata
            count += 1
            expiry = min(expiry, struct.unpack_from("!I", rdata, 8)[0])
        return out, count, expiry

    def fork(self) -> SteeredSigner:
        """A signer that starts from this one's cache and last table and goes its own way
        (the benchmark signs several alternative next tables from one state)."""
        other = copy.copy(self)
        other._cache, other._used_at = dict(self._cache), dict(self._used_at)
        return other


def _sets_used(
    row: np.ndarray, split_start: np.ndarray, split_set: np.ndarray, sets: int
) -> np.ndarray:
    """The answer sets one policy's groups can be given (whole, or through a split row)."""
    used = np.zeros(sets, dtype=bool)
    used[row[row >= 0]] = True
    splits = len(split_start) - 1
    if splits > 0:
        wanted = np.zeros(splits, dtype=bool)
        wanted[-row[row < 0] - 1] = True
        of_entry = np.repeat(wanted, np.diff(split_start))  # each split entry: its row wanted?
        used[split_set[: len(of_entry)][of_entry]] = True
    return np.flatnonzero(used)
