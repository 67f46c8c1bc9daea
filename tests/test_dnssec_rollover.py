"""A DNSSEC key rollover, with the clock moved through it: at every moment, a validating
resolver holding any mix of cached DS, DNSKEY and answers (each fetched within its TTL)
accepts the answers. The same check finds the failure of a rollover without its waits."""

from __future__ import annotations

from pathlib import Path

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import pytest

from router.config import dnssec_keys
from router.config.deployment import load_deployment
from router.dns.dnssec import SteeredSigner
from router.dns.engine import Responder, TableView
from router.service.compiled import build_book, compile_deployment, last_known_health, zone_ttls
from tests.conftest import make_deployment

ZONE = dns.name.from_text("cdn.example.")
T0 = 1_800_000_000.0  # the moment the rollover starts (virtual: every signature is made for it)
PARENT_DS_TTL = 3600
STEP = 900.0
QUESTIONS = [("www.cdn.example.", "A"), ("origin.cdn.example.", "A"), ("nope.cdn.example.", "AAAA")]


def _snapshots(zones: Path, moments: list[float]) -> dict[float, dict]:
    """What the router serves at each moment: the DNSKEY set and the answers, each signed as
    the router signs them at that moment (the key files' schedule decides which keys)."""
    deployment = load_deployment(zones)
    compiled = compile_deployment(deployment)
    table = compiled.plan(last_known_health(deployment, compiled.model).states())
    out = {}
    for moment in moments:
        book = build_book(deployment, compiled.model, now=moment)
        signer = SteeredSigner(book.steered, book.steered_signers, 5 * 86400)
        signatures = signer.sign_table(
            table.group_set, table.set_nodes, table.split_start, table.split_set, moment
        )
        view = TableView(table, signatures)
        responder = Responder(book, compiled.model.client_map, lambda view=view: view)
        replies = {}
        for name, rdtype in [("cdn.example.", "DNSKEY"), *QUESTIONS]:
            query = dns.message.make_query(name, rdtype, use_edns=0, want_dnssec=True)
            replies[(name, rdtype)] = dns.message.from_wire(
                responder.respond(query.to_wire(), "127.0.0.1", False)
            )
        out[moment] = replies
    return out


def _validates(
    ds_set: list, dnskey_reply: dns.message.Message, reply: dns.message.Message, now: float
) -> bool:
    dnskeys = dnskey_reply.find_rrset(
        dnskey_reply.answer, ZONE, dns.rdataclass.IN, dns.rdatatype.DNSKEY
    )
    key_sigs = dnskey_reply.find_rrset(dnskey_reply.answer, ZONE, dns.rdataclass.IN, dns.rdatatype.RRSIG,
                                       dns.rdatatype.DNSKEY)  # fmt: skip
    # The DNSKEY set must be signed by a key the parent's DS (as cached) points at.
    anchored = dns.rrset.RRset(ZONE, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    for key in dnskeys:
        if any(dns.dnssec.make_ds(ZONE, key, "SHA256") == ds for ds in ds_set):
            anchored.add(key, dnskeys.ttl)
    try:
        dns.dnssec.validate(dnskeys, key_sigs, {ZONE: anchored}, now=now)
        for section in (reply.answer, reply.authority):
            for rrset in section:
                if rrset.rdtype == dns.rdatatype.RRSIG:
                    continue
                sigs = reply.find_rrset(
                    section, rrset.name, rrset.rdclass, dns.rdatatype.RRSIG, rrset.rdtype
                )
                dns.dnssec.validate(rrset, sigs, {ZONE: dnskeys}, now=now)
    except (dns.dnssec.ValidationFailure, KeyError):
        return False
    return True


def _failures(zones: Path, publish: float, switch: float, remove: float, ds_of: dict) -> list[str]:
    """Every (moment, fetch times) at which a resolver would reject an answer; the parent's
    DS set follows the procedure: the old DS, both from ``publish``, the new from ``switch``."""
    deployment = load_deployment(zones)
    largest, dnskey_ttl = zone_ttls(deployment)
    data_ttl, key_ttl = largest[ZONE], dnskey_ttl[ZONE]
    end = remove + 2 * max(data_ttl, PARENT_DS_TTL)
    moments = sorted({T0 - 2 * STEP, *[T0 + i * STEP for i in range(int((end - T0) // STEP) + 1)],
                      *(t + d for t in (publish, switch, remove) for d in (-1.0, 1.0))})  # fmt: skip
    snapshots = _snapshots(zones, moments)

    def parent_ds(at: float) -> list:
        if at < publish:
            return [ds_of["old"]]
        return [ds_of["old"], ds_of["new"]] if at < switch else [ds_of["new"]]

    failures = []
    for now in moments:
        window = [m for m in moments if m <= now]
        for f_ds in (m for m in window if now - m < PARENT_DS_TTL):
            for f_key in (m for m in window if now - m < key_ttl):
                for f_data in (m for m in window if now - m < data_ttl):
                    for question in QUESTIONS:
                        reply = snapshots[f_data][question]
                        if not _validates(
                            parent_ds(f_ds),
                            snapshots[f_key][("cdn.example.", "DNSKEY")],
                            reply,
                            now,
                        ):
                            failures.append(f"at T0+{now - T0:.0f}: DS from T0+{f_ds - T0:.0f}, DNSKEY from "
                                            f"T0+{f_key - T0:.0f}, {question} from T0+{f_data - T0:.0f}")  # fmt: skip
    return failures


def _signed_zone(root: Path, split: bool = False) -> tuple[Path, dict]:
    zones = make_deployment(root)
    dnssec_keys.keygen(zones, split=split, now=T0 - 30 * 86400)
    paths = sorted((zones / "dnssec-keys").glob("Kcdn*"))
    roles = {
        dnssec_keys.load_key_file(p, {ZONE, dns.name.from_text("edge.example.")})[0].role: p
        for p in paths
    }
    return zones, {"old_path": roles.get("csk") or roles["ksk"]}


def _ds(path: Path):  # noqa: ANN202
    key, problems = dnssec_keys.load_key_file(path, {ZONE, dns.name.from_text("edge.example.")})
    assert not problems
    return dns.dnssec.make_ds(ZONE, key.dnskey, "SHA256")


@pytest.mark.integration
def test_a_csk_rollover_validates_at_every_step(tmp_path: Path) -> None:
    zones, paths = _signed_zone(tmp_path)
    deployment = load_deployment(zones)
    largest, dnskey_ttl = zone_ttls(deployment)
    plan = dnssec_keys.rollover(zones, ZONE, largest[ZONE], dnskey_ttl[ZONE], PARENT_DS_TTL, now=T0)
    first, second = dnssec_keys.rollover_waits(largest[ZONE], dnskey_ttl[ZONE], PARENT_DS_TTL, True)
    assert (plan.switch - plan.publish, plan.remove - plan.switch) == (first, second)
    assert plan.signs_keys and plan.old == paths["old_path"]
    ds_of = {"old": _ds(plan.old), "new": _ds(plan.new)}
    assert _failures(zones, plan.publish, plan.switch, plan.remove, ds_of) == []
    # And after it, the old key is gone: only the new one is served.
    final = load_deployment(zones)
    published = [
        k.key_tag for k in final.dnssec_keys if k.zone == ZONE and k.published(plan.remove + 1)
    ]
    assert published == [dnssec_keys.load_key_file(plan.new, set(final.zones))[0].key_tag]


@pytest.mark.integration
def test_the_check_finds_a_rollover_without_its_waits(tmp_path: Path) -> None:
    """The harness can fail: switching and removing at once breaks resolvers that cached the
    old DNSKEY set or data signed by the old key."""
    zones, _ = _signed_zone(tmp_path)
    deployment = load_deployment(zones)
    largest, dnskey_ttl = zone_ttls(deployment)
    plan = dnssec_keys.rollover(zones, ZONE, largest[ZONE], dnskey_ttl[ZONE], PARENT_DS_TTL, now=T0)
    dnssec_keys.schedule(plan.old, inactive=T0 + 1, delete=T0 + 2)
    text = plan.new.read_text().replace(dnssec_keys._iso(plan.switch), dnssec_keys._iso(T0 + 1))
    dnssec_keys.write_secret_file(plan.new, text)
    failures = _failures(zones, T0, T0 + 1, T0 + 2, {"old": _ds(plan.old), "new": _ds(plan.new)})
    assert failures, "a rollover with no waits must break some cached view"


@pytest.mark.integration
def test_a_ksk_rollover_of_split_keys_validates_at_every_step(tmp_path: Path) -> None:
    """A KSK and a ZSK: the KSK rolls (the ZSK keeps signing the data); the DNSKEY set is
    signed by both KSKs from the new one's publication until the old one's removal."""
    zones, paths = _signed_zone(tmp_path, split=True)
    deployment = load_deployment(zones)
    largest, dnskey_ttl = zone_ttls(deployment)
    plan = dnssec_keys.rollover(
        zones, ZONE, largest[ZONE], dnskey_ttl[ZONE], PARENT_DS_TTL, now=T0, key="ksk"
    )
    assert plan.old == paths["old_path"] and plan.signs_keys
    assert (
        plan.remove - plan.switch
        == max(dnskey_ttl[ZONE], PARENT_DS_TTL) + dnssec_keys.PROPAGATION_S
    )
    ds_of = {"old": _ds(plan.old), "new": _ds(plan.new)}
    assert _failures(zones, plan.publish, plan.switch, plan.remove, ds_of) == []
    final = load_deployment(zones)
    roles = sorted(
        k.role for k in final.dnssec_keys if k.zone == ZONE and k.published(plan.remove + 1)
    )
    assert roles == ["ksk", "zsk"]
