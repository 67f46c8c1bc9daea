"""DNSSEC: keys, signed answers (validated with dnspython's validator), the NSEC chain's
denials, the compiled path byte-identical to the general one with DO=1, signing per table."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import numpy as np
import pytest

from router.config import dnssec_keys
from router.config.deployment import load_deployment
from router.config.problems import ConfigError
from router.dns.dnssec import canonical_key
from router.dns.engine import Responder, TableView
from router.dns.fast_answer import PUNT, FastResponder, compile_book
from router.health.state import NodeState
from router.service.compiled import compile_deployment, last_known_health, resign_time
from router.service.config_files import config_paths
from tests.conftest import REPO, make_deployment

RRSIG = dns.rdatatype.RRSIG
NSEC = dns.rdatatype.NSEC


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory):
    zones = make_deployment(tmp_path_factory.mktemp("signed"))
    written, notes = dnssec_keys.keygen(zones)
    assert len(written) == 2 and "deployment.yaml: added dnssec: keys: dnssec-keys" in notes
    deployment = load_deployment(zones)
    compiled = compile_deployment(deployment)
    health = last_known_health(deployment, compiled.model)
    table = compiled.plan(health.states())
    view = TableView(table, compiled.sign(table))
    responder = Responder(compiled.book, compiled.model.client_map, lambda: view)
    return zones, compiled, table, view, responder


def ask(responder, name: str, rdtype: str, do: bool = True, ecs: str | None = None, udp: bool = True,
        payload: int = 1232) -> dns.message.Message:  # fmt: skip
    query = dns.message.make_query(name, rdtype, use_edns=0, payload=payload, want_dnssec=do)
    if ecs is not None:
        bits = 48 if ":" in ecs else 24
        query.use_edns(
            0, dns.flags.DO if do else 0, payload, options=[dns.edns.ECSOption(ecs, bits)]
        )
    return dns.message.from_wire(responder.respond(query.to_wire(), "127.0.0.1", udp))


def zone_keys(responder) -> dict:
    keys = {}
    for origin in ("cdn.example.", "edge.example."):
        reply = ask(responder, origin, "DNSKEY")
        dnskeys = reply.find_rrset(
            reply.answer, dns.name.from_text(origin), dns.rdataclass.IN, dns.rdatatype.DNSKEY
        )
        sig = reply.find_rrset(
            reply.answer, dnskeys.name, dns.rdataclass.IN, RRSIG, dns.rdatatype.DNSKEY
        )
        keys[dnskeys.name] = dnskeys
        dns.dnssec.validate(dnskeys, sig, {dnskeys.name: dnskeys})  # self-signed by the CSK
    return keys


def validate_sections(reply: dns.message.Message, keys: dict, referral: bool = False) -> list:
    """Every RRset of the answer and authority sections validated with its RRSIG (the NS set
    of a referral is not signed: RFC 4035 2.2); returns the NSEC RRsets."""
    nsecs = []
    for section in (reply.answer, reply.authority):
        for rrset in section:
            if rrset.rdtype == RRSIG:
                continue
            if referral and rrset.rdtype == dns.rdatatype.NS:
                continue
            sig = reply.find_rrset(section, rrset.name, rrset.rdclass, RRSIG, rrset.rdtype)
            dns.dnssec.validate(rrset, sig, keys)
            if rrset.rdtype == NSEC:
                nsecs.append(rrset)
    return nsecs


def covers(nsec, name: str) -> bool:
    """``name`` sorts strictly between the NSEC's owner and its next name (RFC 4034 6.1)."""
    key = canonical_key(dns.name.from_text(name).canonicalize().to_wire())
    owner = canonical_key(nsec.name.canonicalize().to_wire())
    following = canonical_key(nsec[0].next.canonicalize().to_wire())
    if owner < following:
        return owner < key < following
    return key > owner or key < following  # the last record wraps to the apex


def test_keygen_writes_secret_files_and_trust_anchor_matches(signed) -> None:
    zones, _, _, _, responder = signed
    files = sorted((zones / "dnssec-keys").glob("*.key.yaml"))
    assert len(files) == 2
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    result = subprocess.run([sys.executable, "-m", "router.cli", "dnssec", "trust-anchor", "--zones", str(zones)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    keys = zone_keys(responder)
    for origin, dnskeys in keys.items():
        ds_lines = [
            line for line in result.stdout.splitlines() if line.startswith(f"{origin} 3600 IN DS ")
        ]
        assert len(ds_lines) == 1
        expected = dns.dnssec.make_ds(origin, dnskeys[0], "SHA256").to_text()
        assert ds_lines[0].endswith(expected)
    again = subprocess.run([sys.executable, "-m", "router.cli", "dnssec", "keygen", "--zones", str(zones)],
                           capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert again.returncode == 0 and "has keys already (kept)" in again.stdout
    assert len(list((zones / "dnssec-keys").glob("*.key.yaml"))) == 2


def test_bad_key_files_are_refused_with_their_path(tmp_path: Path) -> None:
    zones = make_deployment(tmp_path)
    dnssec_keys.keygen(zones)
    path = next((zones / "dnssec-keys").glob("Kcdn*.key.yaml"))
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError) as error:
        load_deployment(zones)
    assert f"{os.path.normpath(path)}: " in str(error.value) and "chmod 600" in str(error.value)
    os.chmod(path, 0o600)
    path.write_text(path.read_text().replace("zone: cdn.example.", "zone: other.example."))
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as error:
        load_deployment(zones)
    assert "other.example. is not served here" in str(error.value)


STEERED = ["www.cdn.example.", "video.cdn.example."]
SUBNETS = ["81.0.0.0", "2a02:9000::", "213.0.0.0", "193.136.0.0"]


@pytest.mark.parametrize("name", STEERED)
@pytest.mark.parametrize("rdtype", ["A", "AAAA"])
def test_steered_answers_validate_from_every_subnet(signed, name: str, rdtype: str) -> None:
    *_, responder = signed
    keys = zone_keys(responder)
    for subnet in SUBNETS:
        reply = ask(responder, name, rdtype, ecs=subnet)
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
        validate_sections(reply, keys)
        assert any(r.rdtype == RRSIG for r in reply.answer)
        plain = ask(responder, name, rdtype, do=False, ecs=subnet)
        assert not any(r.rdtype == RRSIG for r in plain.answer)
        assert [r for r in reply.answer if r.rdtype != RRSIG] == plain.answer  # same steering


@pytest.mark.parametrize(
    "name, rdtype",
    [("origin.cdn.example.", "A"), ("cdn.example.", "MX"), ("cdn.example.", "ANY"), ("images.cdn.example.", "A"),
     ("chain.edge.example.", "A"), ("x.wild.edge.example.", "A"), ("y.x.wild.edge.example.", "A")],
)  # fmt: skip
def test_static_answers_validate(signed, name: str, rdtype: str) -> None:
    *_, responder = signed
    keys = zone_keys(responder)
    reply = ask(responder, name, rdtype)
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer
    nsecs = validate_sections(reply, keys)
    if "wild" in name:  # synthesised: the RRSIG's labels say so and an NSEC proves no closer name
        sig = next(r for r in reply.answer if r.rdtype == RRSIG)
        assert sig[0].labels == 3 and len(nsecs) == 1 and covers(nsecs[0], name)


def test_nxdomain_proves_the_name_and_the_wildcard_absent(signed) -> None:
    *_, responder = signed
    keys = zone_keys(responder)
    for name, encloser in [("nope.cdn.example.", "cdn.example."), ("a.b.nope.cdn.example.", "cdn.example."),
                           ("zzz.edge.example.", "edge.example."), ("x.b.c.edge.example.", "b.c.edge.example.")]:  # fmt: skip
        reply = ask(responder, name, "A")
        assert reply.rcode() == dns.rcode.NXDOMAIN
        nsecs = validate_sections(reply, keys)
        assert any(covers(n, name) for n in nsecs), (name, nsecs)
        assert any(covers(n, "*." + encloser) for n in nsecs), (name, nsecs)


def test_nodata_proves_the_type_absent(signed) -> None:
    *_, responder = signed
    keys = zone_keys(responder)
    reply = ask(responder, "origin.cdn.example.", "TXT")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    [nsec] = validate_sections(reply, keys)
    assert nsec.name == dns.name.from_text("origin.cdn.example.")
    assert nsec[0].to_text().split()[1:] == ["A", "AAAA", "RRSIG", "NSEC"]  # no TXT
    # An empty non-terminal: the NSEC before it, whose next name is below it.
    reply = ask(responder, "c.edge.example.", "A")
    [nsec] = validate_sections(reply, keys)
    assert covers(nsec, "c.edge.example.") and nsec[0].next.is_subdomain(
        dns.name.from_text("c.edge.example.")
    )


def test_referral_to_unsigned_child_proves_no_ds(signed) -> None:
    *_, responder = signed
    keys = zone_keys(responder)
    reply = ask(responder, "www.sub.edge.example.", "A")
    assert not reply.flags & dns.flags.AA
    [nsec] = validate_sections(reply, keys, referral=True)
    assert (
        nsec.name == dns.name.from_text("sub.edge.example.")
        and "DS" not in nsec[0].to_text().split()
    )


def test_signed_answers_that_do_not_fit_are_truncated_whole(signed) -> None:
    *_, responder = signed
    reply = ask(responder, "big.edge.example.", "TXT")
    assert reply.flags & dns.flags.TC and not reply.answer and not reply.authority
    full = ask(responder, "big.edge.example.", "TXT", udp=False)
    assert not full.flags & dns.flags.TC
    validate_sections(full, zone_keys(responder))
    # ECS and the signatures together stay within the 1232-octet default.
    for name in STEERED:
        query = dns.message.make_query(name, "AAAA", use_edns=0, payload=4096, want_dnssec=True)
        query.use_edns(0, dns.flags.DO, 4096, options=[dns.edns.ECSOption("2a02:9000::", 56)])
        wire = responder.respond(query.to_wire(), "127.0.0.1", True)
        assert len(wire) <= 1232


def _queries(rng: random.Random) -> list[bytes]:
    names = STEERED + ["origin.cdn.example.", "nope.cdn.example.", "cdn.example.", "images.cdn.example.",
                       "c.edge.example.", "b.c.edge.example.", "x.b.c.edge.example.", "edge.example.",
                       "mail.edge.example.", "ns1.edge.example.", "MAIL.cdn.EXAMPLE.", "other.invalid."]  # fmt: skip
    for _ in range(150):  # random names in both zones: NXDOMAIN all over the chain
        label = "".join(
            rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-~") for _ in range(rng.randint(1, 12))
        )
        names.append(
            f"{label}.{rng.choice(['cdn.example.', 'edge.example.', 'b.c.edge.example.'])}"
        )
    out = []
    for name in names:
        for rdtype in ("A", "AAAA", "TXT", "MX", "SOA", "DNSKEY", "NSEC", "DS"):
            for do in (True, False):
                ecs = rng.choice([None, *SUBNETS])
                query = dns.message.make_query(name, rdtype, use_edns=0, want_dnssec=do)
                if ecs is not None:
                    bits = 48 if ":" in ecs else 24
                    query.use_edns(
                        0, dns.flags.DO if do else 0, 1232, options=[dns.edns.ECSOption(ecs, bits)]
                    )
                out.append(query.to_wire())
    return out


def test_compiled_path_is_byte_identical_with_do(signed) -> None:
    _, compiled, _, view, responder = signed
    fast = FastResponder(compile_book(compiled.book, compiled.model.client_map), lambda: view)
    answered = punted = 0
    for wire in _queries(random.Random(5)):
        reply = fast.respond(wire, "127.0.0.1", True)
        if reply == PUNT:
            punted += 1
            continue
        assert reply == responder.respond(wire, "127.0.0.1", True), dns.message.from_wire(
            wire
        ).question
        answered += 1
    # Signed steered answers and denials are answered compiled; only the rare kinds punt.
    assert punted < answered / 20, (punted, answered)


def test_a_table_signs_only_the_sets_it_has_not_seen(signed) -> None:
    _, compiled, table, _, _ = signed
    signer = compiled.table_signer
    assert signer is not None
    first = compiled.sign(table)
    assert signer.signed_last == 0  # the fixture's table was signed already: all from the cache
    states = table.node_state.copy()
    used = [
        int(n) for n in table.set_nodes[table.group_set[table.group_set >= 0]].ravel() if n >= 0
    ]
    states[max(set(used), key=used.count)] = NodeState.DOWN
    after = compiled.plan(states, generation=2)
    signatures = compiled.sign(after)
    new_sets = {(e, after.set_nodes[s][after.set_nodes[s] >= 0].tobytes())
                for e, s in zip(*np.nonzero(signatures.slot >= 0))}  # fmt: skip
    old_sets = {(e, table.set_nodes[s][table.set_nodes[s] >= 0].tobytes())
                for e, s in zip(*np.nonzero(first.slot >= 0))}  # fmt: skip
    assert 0 < signer.signed_last == len(new_sets - old_sets)
    view = TableView(after, signatures)
    responder = Responder(compiled.book, compiled.model.client_map, lambda: view)
    keys = zone_keys(responder)
    for subnet in SUBNETS:
        reply = ask(responder, "www.cdn.example.", "A", ecs=subnet)
        validate_sections(reply, keys)


def _check(zones: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "router.cli", "check", str(zones)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)  # fmt: skip


@pytest.mark.integration
def test_router_check_warns_of_missing_ds_and_of_signing_that_would_stop(tmp_path: Path) -> None:
    zones = make_deployment(tmp_path)
    dnssec_keys.keygen(zones)
    clean = _check(zones)
    assert clean.returncode == 0 and "warning:" not in clean.stdout, clean.stdout + clean.stderr
    # The parent holds the DS of edge.example. only, and a stale one for cdn.example.
    anchor = dnssec_keys.trust_anchor_text(zones)
    edge_ds = next(
        line for line in anchor.splitlines() if line.startswith("edge.example. 3600 IN DS")
    )
    (zones / "parent-ds.txt").write_text(
        edge_ds + "\ncdn.example. 3600 IN DS 1 13 2 " + "ab" * 32 + "\n"
    )
    with open(zones / "deployment.yaml", "a") as handle:
        handle.write("  parent_ds: parent-ds.txt\n")
    warned = _check(zones)
    assert warned.returncode == 0, warned.stderr
    lines = [line for line in warned.stdout.splitlines() if line.startswith("warning:")]
    assert any(
        "cdn.example.: key" in line and "has no matching DS at the parent" in line for line in lines
    )
    assert any("the parent's DS for key tag 1 matches no published key" in line for line in lines)
    assert not any("edge.example." in line for line in lines), lines
    # A key that stops signing with no successor: its signatures would run out.
    path = next((zones / "dnssec-keys").glob("Kedge*.key.yaml"))
    dnssec_keys.schedule(path, inactive=time.time() + 86400)
    stopping = _check(zones)
    assert any("edge.example.: from" in line and "no key signs its data" in line
               for line in stopping.stdout.splitlines()), stopping.stdout  # fmt: skip


@pytest.mark.integration
def test_rollover_command_prints_its_steps_and_the_router_follows_the_files(tmp_path: Path) -> None:
    zones = make_deployment(tmp_path)
    dnssec_keys.keygen(zones)
    before = config_paths(zones)
    result = subprocess.run([sys.executable, "-m", "router.cli", "dnssec", "rollover", "--zones", str(zones),
                             "--zone", "cdn.example.", "--parent-ds-ttl", "7200"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "give the parent the new DS" in result.stdout and "remove the old DS" in result.stdout
    keys = sorted((zones / "dnssec-keys").glob("Kcdn*.key.yaml"))
    assert len(keys) == 2  # the old key and its successor
    assert set(config_paths(zones)) - set(before) == set(keys) - set(
        before
    )  # the new key file is watched
    deployment = load_deployment(zones)
    compiled = compile_deployment(deployment)
    due = resign_time(deployment, compiled.book)
    switch = min(k.activate for k in deployment.dnssec_keys if k.activate > time.time())
    assert due == switch  # the router re-signs by itself when the new key takes over


def test_signatures_are_made_again_before_they_expire(signed) -> None:
    zones, compiled, *_ = signed
    deployment = load_deployment(zones)
    due = resign_time(deployment, compiled.book)
    settings = deployment.dnssec
    reply = ask(signed[4], "origin.cdn.example.", "A")
    expiration = min(r.expiration for rrset in reply.answer if rrset.rdtype == RRSIG for r in rrset)
    # Due at least resign_before_days ahead of the earliest expiry a signature made now can have.
    assert due is not None and due <= expiration - settings.resign_before_days * 86400
    assert due > time.time() + 86400


def test_a_zone_whose_keys_are_not_published_yet_is_signed_when_they_are(tmp_path: Path) -> None:
    zones = make_deployment(tmp_path)
    later = time.time() + 3 * 86400
    dnssec_keys.keygen(zones, now=later)
    deployment = load_deployment(zones)
    compiled = compile_deployment(deployment)
    assert all(index.signer is None for index in compiled.book.zones.values())  # unsigned for now
    assert compiled.table_signer is None
    assert resign_time(deployment, compiled.book) == pytest.approx(int(later), abs=1)


def test_signatures_copied_from_the_last_table_are_the_same_bytes(signed) -> None:
    """A node goes down and comes back: the third table signs nothing (every set was signed
    for the first or second) and gives every (entry, set) the very records the first gave."""
    _, compiled, table, _, _ = signed
    signer = compiled.table_signer
    first = compiled.sign(table)
    states = table.node_state.copy()
    used = [
        int(n) for n in table.set_nodes[table.group_set[table.group_set >= 0]].ravel() if n >= 0
    ]
    states[max(set(used), key=used.count)] = NodeState.DOWN
    compiled.sign(compiled.plan(states, generation=3))
    back = compiled.plan(table.node_state.copy(), generation=4)
    again = compiled.sign(back)
    assert signer.signed_last == 0

    def records(signatures, plan) -> dict:
        out = {}
        for e, s in zip(*np.nonzero(signatures.slot >= 0)):
            nodes = plan.set_nodes[s][plan.set_nodes[s] >= 0].tobytes()
            out[(int(e), nodes)] = signatures.records(int(e), int(s))
        return out

    assert records(again, back) == records(first, table)
