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
from loadtest.throughput.peers import deciding_block
from loadtest.throughput.queries import draw_subnets, encode_query, unframe, zone_inventory

pytestmark = pytest.mark.timeout(90)

ZONES = Path(__file__).resolve().parents[1] / "zones"
# Sample-map clients in different ISPs (README's tour): each gets its own node pair.
SUBNETS = ["83.44.10.0/24", "90.0.0.0/24", "2.80.0.0/24", "8.8.8.0/24"]


@pytest.fixture(scope="module")
def peers():
    return pdns_signed.sample_peers(ZONES, SUBNETS)


@pytest.fixture(scope="module")
def pdns(peers, tmp_path_factory: pytest.TempPathFactory):
    notes = pdns_signed.ensure_packages()
    if notes:
        pytest.skip("PowerDNS cannot be had: " + "; ".join(notes.values()))
    server = pdns_signed.start_signed_pdns(peers, tmp_path_factory.mktemp("pdns-signed"))
    yield server
    server.stop()


def ask(server, wire: bytes) -> dns.message.Message:  # noqa: ANN001
    return dns.message.from_wire(dns.query.udp(dns.message.from_wire(wire), "127.0.0.1", port=server.port,
                                               timeout=3).to_wire())  # fmt: skip


def steered(peers, label: str = "video"):  # noqa: ANN001, ANN201
    [name] = [s for s in peers.steered if s.label == label]
    return dns.name.from_text(name.label, dns.name.from_text(peers.zone)), name.policy


def expected_v4(peers, policy: int, subnet: str) -> set[str]:  # noqa: ANN001
    _, group = deciding_block(peers.oracle.model.client_map, subnet)
    oracle = peers.oracle
    return set(oracle.node_addresses(oracle.set_nodes(oracle.answer_set(policy, group)))[0])


def test_signed_config_is_one_ecdsa_csk_with_nsec(pdns) -> None:  # noqa: ANN001
    config = (Path(pdns.extra["config_dir"]) / "pdns.conf").read_text().splitlines()
    assert "default-ksk-algorithm=ecdsa256" in config and "default-zsk-algorithm=" in config
    assert any(line.startswith("bind-dnssec-db=") for line in config)
    ds = pdns_signed.zone_records(pdns, "DS")
    assert {line.split()[5] for line in ds} == {"2", "4"}  # SHA-256 and SHA-384 digests
    assert all(line.split()[4] == "13" for line in ds)
    [dnskey] = pdns_signed.zone_records(pdns, "DNSKEY")
    assert dnskey.split()[3:6] == ["257", "3", "13"]


def test_steered_answer_is_signed_with_do_only_and_validates(pdns, peers) -> None:  # noqa: ANN001
    name, policy = steered(peers)
    origin = dns.name.from_text(peers.zone)
    keys = ask(pdns, encode_query(peers.zone, "DNSKEY", None))
    dnskeys = keys.find_rrset(keys.answer, origin, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    for subnet in SUBNETS:
        plain = ask(pdns, encode_query(name.to_text(), "A", subnet))
        signed = ask(pdns, with_do(encode_query(name.to_text(), "A", subnet)))
        assert plain.rcode() == signed.rcode() == dns.rcode.NOERROR
        assert not any(r.rdtype == dns.rdatatype.RRSIG for r in plain.answer), plain
        assert signed.ednsflags & dns.flags.DO, "PowerDNS must echo DO (RFC 3225)"
        answer = signed.find_rrset(signed.answer, name, dns.rdataclass.IN, dns.rdatatype.A)
        sig = signed.find_rrset(
            signed.answer, name, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.A
        )
        dns.dnssec.validate(answer, sig, {origin: dnskeys})  # raises ValidationFailure if bad
        assert {r.address for r in answer} == expected_v4(peers, policy, subnet), subnet
    # The LUA answers differ per client: ECS reached the LUA records, and each one was signed.
    assert len({frozenset(expected_v4(peers, policy, s)) for s in SUBNETS}) >= 3


def test_nxdomain_is_denied_with_signed_nsec(pdns, peers) -> None:  # noqa: ANN001
    origin = dns.name.from_text(peers.zone)
    keys = ask(pdns, encode_query(peers.zone, "DNSKEY", None))
    dnskeys = keys.find_rrset(keys.answer, origin, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    reply = ask(pdns, with_do(encode_query(f"no-such-name.{peers.zone}", "A", None)))
    assert reply.rcode() == dns.rcode.NXDOMAIN
    nsecs = [r for r in reply.authority if r.rdtype == dns.rdatatype.NSEC]
    assert nsecs, reply
    assert not any(r.rdtype == dns.rdatatype.NSEC3 for r in reply.authority)
    for nsec in nsecs:
        sig = reply.find_rrset(
            reply.authority, nsec.name, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.NSEC
        )
        dns.dnssec.validate(nsec, sig, {origin: dnskeys})


def test_do_files_differ_from_plain_by_the_do_bit_alone(peers, tmp_path: Path) -> None:  # noqa: ANN001
    rng = random.Random(7)
    inventory = zone_inventory(ZONES / f"{peers.zone.rstrip('.')}.zone",
                               [(f"{s.label}.{peers.zone}", s.policy) for s in peers.steered], rng)  # fmt: skip
    subnets = draw_subnets(peers.oracle.model.client_map, rng, 20)
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
