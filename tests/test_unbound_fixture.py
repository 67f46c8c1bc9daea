"""tests/unbound.py: a real validating Unbound in front of the signed PowerDNS peer.

With the zone's DS as its trust anchor Unbound answers the steered names with AD=1 for
several ECS client subnets, and the answers are PowerDNS's LUA answers for those subnets (ECS
reached the authoritative); NXDOMAIN and NODATA also come back AD=1 (NSEC validated). With
another key's DS it answers SERVFAIL and logs why. It only ever talks to 127.0.0.1, and its
cache can be flushed. This proves the fixture validates for real before it is put in front
of the router. Skipped, with the reason, when Unbound or PowerDNS cannot be had.
"""

from __future__ import annotations

from pathlib import Path

import dns.dnssec
import dns.flags
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from loadtest.dnssec import pdns_signed
from tests.conftest import SIGNED_PDNS_SUBNETS
from tests.unbound import (
    Unbound,
    UnboundUnavailable,
    find_unbound,
    sent_queries,
    unbound_log_targets,
)

pytestmark = pytest.mark.timeout(120)

ZONES = Path(__file__).resolve().parents[1] / "zones"
SUBNETS = SIGNED_PDNS_SUBNETS  # the signed_pdns_peers and signed_pdns fixtures (tests/conftest.py) are for these


@pytest.fixture(scope="module", autouse=True)
def unbound_installed() -> None:
    """First (autouse): without Unbound the module skips before PowerDNS is started."""
    try:
        find_unbound()
    except UnboundUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def unbound(signed_pdns, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001
    with Unbound(signed_pdns.extra["zone"], signed_pdns.port, pdns_signed.zone_records(signed_pdns, "DS"),
                 tmp_path_factory.mktemp("unbound-good")) as resolver:  # fmt: skip
        yield resolver


def expected(signed_pdns_peers, label: str, rdtype: str, subnet: str) -> set[str]:  # noqa: ANN001
    [policy] = [s.policy for s in signed_pdns_peers.steered if s.label == label]
    v4, v6 = pdns_signed.expected_addresses(signed_pdns_peers, policy, subnet)
    return set(v4 if rdtype == "A" else v6)


def addresses(reply, name: str, rdtype: str) -> set[str]:  # noqa: ANN001
    rrset = reply.get_rrset(reply.answer, dns.name.from_text(name), dns.rdataclass.IN,
                            dns.rdatatype.from_text(rdtype))  # fmt: skip
    return {r.address for r in rrset} if rrset is not None else set()


@pytest.mark.parametrize("label", ["video", "www"])
def test_steered_answers_validate_per_client_subnet(unbound, signed_pdns_peers, label: str) -> None:  # noqa: ANN001
    name = f"{label}.{signed_pdns_peers.zone}"
    answers = {}
    for subnet in SUBNETS:
        for rdtype in ("A", "AAAA"):
            reply = unbound.query(name, rdtype, ecs=subnet)
            assert reply.rcode() == dns.rcode.NOERROR, (
                f"{name} {rdtype} {subnet}: {reply}\n{unbound.log_tail()}"
            )
            assert reply.flags & dns.flags.AD, (
                f"{name} {rdtype} {subnet} not validated\n{unbound.log_tail()}"
            )
            assert addresses(reply, name, rdtype) == expected(
                signed_pdns_peers, label, rdtype, subnet
            ), (
                subnet,
                reply,
            )
            assert any(r.rdtype == dns.rdatatype.RRSIG for r in reply.answer), reply  # DO=1: kept
        answers[subnet] = frozenset(addresses(reply, name, "AAAA"))
    # Different subnets, different LUA answers: each client's ECS reached PowerDNS through Unbound.
    assert len(set(answers.values())) >= 3, answers


def test_nxdomain_and_nodata_validate(unbound, signed_pdns_peers) -> None:  # noqa: ANN001
    nx = unbound.query(f"no-such-name.{signed_pdns_peers.zone}", "A")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.flags & dns.flags.AD, (
        f"{nx}\n{unbound.log_tail()}"
    )
    nodata = unbound.query(f"video.{signed_pdns_peers.zone}", "TXT", ecs=SUBNETS[0])
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer, nodata
    assert nodata.flags & dns.flags.AD, f"{nodata}\n{unbound.log_tail()}"


def test_only_loopback_is_queried(unbound, signed_pdns_peers) -> None:  # noqa: ANN001
    unbound.query(f"images.{signed_pdns_peers.zone}", "A")
    targets = unbound_log_targets(unbound.log_text())
    assert targets == {"127.0.0.1"}, targets  # non-empty: the log does record every target


def test_flush_makes_unbound_ask_again(unbound, signed_pdns_peers) -> None:  # noqa: ANN001
    name, subnet = f"www.{signed_pdns_peers.zone}", "90.0.0.0/24"
    first = unbound.query(name, "A", ecs=subnet)
    sent = sent_queries(unbound.log_text(), name, "A")
    again = unbound.query(name, "A", ecs=subnet)
    assert sent >= 1 and sent_queries(unbound.log_text(), name, "A") == sent, (
        "second ask not from the cache"
    )
    unbound.flush()
    fresh = unbound.query(name, "A", ecs=subnet)
    assert sent_queries(unbound.log_text(), name, "A") == sent + 1, unbound.log_tail()
    assert all(r.flags & dns.flags.AD for r in (first, again, fresh))


def other_key_ds(zone: str) -> str:
    """The DS of a fresh ECDSAP256SHA256 key that never signed anything in the zone."""
    key = ec.generate_private_key(ec.SECP256R1())
    dnskey = dns.dnssec.make_dnskey(
        key.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257
    )
    return f"{zone} IN DS {dns.dnssec.make_ds(zone, dnskey, 'SHA256')}"


def test_wrong_trust_anchor_gives_servfail(signed_pdns, signed_pdns_peers, tmp_path: Path) -> None:  # noqa: ANN001
    wrong = other_key_ds(signed_pdns_peers.zone)
    assert wrong.split()[3] not in {
        line.split()[3] for line in pdns_signed.zone_records(signed_pdns, "DS")
    }
    with Unbound(signed_pdns_peers.zone, signed_pdns.port, [wrong], tmp_path) as bad:
        reply = bad.query(f"video.{signed_pdns_peers.zone}", "A", ecs=SUBNETS[0])
        assert reply.rcode() == dns.rcode.SERVFAIL, reply
        assert not reply.flags & dns.flags.AD
        assert any("chain of trust" in f for f in bad.validation_failures()), (
            bad.log_tail()
        )  # and why


def test_names_outside_the_zone_are_refused_unasked(unbound) -> None:  # noqa: ANN001
    before = unbound_log_targets(unbound.log_text())
    reply = unbound.query("example.com.", "A")
    assert reply.rcode() == dns.rcode.REFUSED, reply
    assert unbound_log_targets(unbound.log_text()) == before == {"127.0.0.1"}
