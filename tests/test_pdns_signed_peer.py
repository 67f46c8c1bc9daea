"""loadtest/dnssec: the signed PowerDNS peer and the DO query files, against the real server.

PowerDNS (Debian's pdns-server with its bind backend) serves the throughput bench's steered
sample zone, secured with one ECDSAP256SHA256 CSK and NSEC, and signs its LUA answers online:
a steered answer carries an RRSIG when DO=1 and none when DO=0, and dnspython validates it
with the DNSKEY PowerDNS serves. The DO query files are the throughput mix with one bit set.
Quick: PowerDNS starts in about a second. Skipped, with the reason, when PowerDNS cannot be had.
"""

from __future__ import annotations

import random
from pathlib import Path

import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from loadtest.dnssec import pdns_signed
from loadtest.dnssec.queries import mixes, variant_wires, with_do, write_query_files
from loadtest.throughput.queries import draw_subnets, encode_query, unframe, zone_inventory
from tests.conftest import SIGNED_PDNS_SUBNETS

pytestmark = pytest.mark.timeout(90)

ZONES = Path(__file__).resolve().parents[1] / "zones"
SUBNETS = SIGNED_PDNS_SUBNETS  # the signed_pdns_peers and signed_pdns fixtures (tests/conftest.py) are for these


def ask(server, wire: bytes) -> dns.message.Message:  # noqa: ANN001
    return dns.message.from_wire(dns.query.udp(dns.message.from_wire(wire), "127.0.0.1", port=server.port,
                                               timeout=3).to_wire())  # fmt: skip


def steered(signed_pdns_peers, label: str = "video"):  # noqa: ANN001, ANN201
    [name] = [s for s in signed_pdns_peers.steered if s.label == label]
    return dns.name.from_text(name.label, dns.name.from_text(signed_pdns_peers.zone)), name.policy


def expected_v4(signed_pdns_peers, policy: int, subnet: str) -> set[str]:  # noqa: ANN001
    return set(pdns_signed.expected_addresses(signed_pdns_peers, policy, subnet)[0])


def test_signed_config_is_one_ecdsa_csk_with_nsec(signed_pdns) -> None:  # noqa: ANN001
    config = (Path(signed_pdns.extra["config_dir"]) / "pdns.conf").read_text().splitlines()
    assert "default-ksk-algorithm=ecdsa256" in config and "default-zsk-algorithm=" in config
    assert any(line.startswith("bind-dnssec-db=") for line in config)
    ds = pdns_signed.zone_records(signed_pdns, "DS")
    assert {line.split()[5] for line in ds} == {"2", "4"}  # SHA-256 and SHA-384 digests
    assert all(line.split()[4] == "13" for line in ds)
    [dnskey] = pdns_signed.zone_records(signed_pdns, "DNSKEY")
    assert dnskey.split()[3:6] == ["257", "3", "13"]


def test_steered_answer_is_signed_with_do_only_and_validates(
    signed_pdns, signed_pdns_peers
) -> None:  # noqa: ANN001
    name, policy = steered(signed_pdns_peers)
    origin = dns.name.from_text(signed_pdns_peers.zone)
    keys = ask(signed_pdns, encode_query(signed_pdns_peers.zone, "DNSKEY", None))
    dnskeys = keys.find_rrset(keys.answer, origin, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    for subnet in SUBNETS:
        plain = ask(signed_pdns, encode_query(name.to_text(), "A", subnet))
        signed = ask(signed_pdns, with_do(encode_query(name.to_text(), "A", subnet)))
        assert plain.rcode() == signed.rcode() == dns.rcode.NOERROR
        assert not any(r.rdtype == dns.rdatatype.RRSIG for r in plain.answer), plain
        assert signed.ednsflags & dns.flags.DO, "PowerDNS must echo DO (RFC 3225)"
        answer = signed.find_rrset(signed.answer, name, dns.rdataclass.IN, dns.rdatatype.A)
        sig = signed.find_rrset(
            signed.answer, name, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.A
        )
        dns.dnssec.validate(answer, sig, {origin: dnskeys})  # raises ValidationFailure if bad
        assert {r.address for r in answer} == expected_v4(signed_pdns_peers, policy, subnet), subnet
    # The LUA answers differ per client: ECS reached the LUA records, and each one was signed.
    assert len({frozenset(expected_v4(signed_pdns_peers, policy, s)) for s in SUBNETS}) >= 3


def test_nxdomain_is_denied_with_signed_nsec(signed_pdns, signed_pdns_peers) -> None:  # noqa: ANN001
    origin = dns.name.from_text(signed_pdns_peers.zone)
    keys = ask(signed_pdns, encode_query(signed_pdns_peers.zone, "DNSKEY", None))
    dnskeys = keys.find_rrset(keys.answer, origin, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    reply = ask(
        signed_pdns, with_do(encode_query(f"no-such-name.{signed_pdns_peers.zone}", "A", None))
    )
    assert reply.rcode() == dns.rcode.NXDOMAIN
    nsecs = [r for r in reply.authority if r.rdtype == dns.rdatatype.NSEC]
    assert nsecs, reply
    assert not any(r.rdtype == dns.rdatatype.NSEC3 for r in reply.authority)
    for nsec in nsecs:
        sig = reply.find_rrset(
            reply.authority, nsec.name, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.NSEC
        )
        dns.dnssec.validate(nsec, sig, {origin: dnskeys})


def test_do_files_differ_from_plain_by_the_do_bit_alone(signed_pdns_peers, tmp_path: Path) -> None:  # noqa: ANN001
    rng = random.Random(7)
    inventory = zone_inventory(ZONES / f"{signed_pdns_peers.zone.rstrip('.')}.zone",
                               [(f"{s.label}.{signed_pdns_peers.zone}", s.policy) for s in signed_pdns_peers.steered], rng)  # fmt: skip
    subnets = draw_subnets(signed_pdns_peers.oracle.model.client_map, rng, 20)
    wires = variant_wires(mixes(inventory, subnets, 300, rng))
    assert set(wires) == {"ecs", "ecs_do", "plain", "plain_do"}
    files = write_query_files(tmp_path, wires)
    for variant in ("ecs", "plain"):
        plain, do = (
            unframe(files[variant].read_bytes()),
            unframe(files[f"{variant}_do"].read_bytes()),
        )
        assert len(plain) == len(do) == 300
        for a, b in zip(plain, do):
            ma, mb = dns.message.from_wire(a), dns.message.from_wire(b)
            assert not ma.ednsflags & dns.flags.DO and mb.ednsflags & dns.flags.DO
            assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1  # one octet
            mb.ednsflags &= ~dns.flags.DO
            assert mb.to_wire() == a
            assert bool([o for o in ma.options if isinstance(o, dns.edns.ECSOption)]) == (
                variant == "ecs"
            )


def test_with_do_refuses_a_message_without_opt() -> None:
    query = dns.message.make_query("video.cdn.example.", "A")  # no EDNS
    with pytest.raises(ValueError, match="OPT record alone"):
        with_do(query.to_wire())
