"""DNS cookies (router/dns/cookies.py): SipHash-2-4 and the RFC 9018 test vectors, the verdicts
and their time window, both answer paths byte for byte, the rate-limit exemption, and the
secret file of deployment.yaml."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import numpy as np
import pytest

from router.config.deployment import load_deployment
from router.config.problems import ConfigError
from router.config.secrets import load_cookie_secrets
from router.dns import cookies, query_log, rrl
from router.dns.engine import Responder
from router.service.config_files import ConfigFiles, secret_paths
from tests.conftest import make_deployment
from tests.test_router_dns_engine import Engine
from tests.test_router_dns_fast_path import Pair

SECRET = bytes.fromhex("e5e973e5a6b2a43f48e7dc849e37bfcf")  # RFC 9018 Appendix A
OTHER = bytes.fromhex("445536bcd2513298075a5d379663c962")
NOW = 1_800_000_000


def _address(source: str) -> tuple[bool, np.uint64, np.uint64]:
    value = int(ipaddress.ip_address(source))
    if ":" in source:
        return True, np.uint64(value >> 64), np.uint64(value & (2**64 - 1))
    return False, np.uint64(0), np.uint64(value)


def issue(secret: bytes, client: bytes, source: str, at: int) -> bytes:
    """The 16-octet server cookie ``secret`` makes for ``client`` at ``source`` at time ``at``."""
    state = cookies.state_array([secret])
    state[cookies.S_NOW] = at
    verdict, stamp, digest = cookies.judge(
        np.frombuffer(client, np.uint8), 0, 8, *_address(source), state
    )
    assert verdict == cookies.CLIENT_ONLY
    return bytes((1, 0, 0, 0)) + int(stamp).to_bytes(4, "big") + int(digest).to_bytes(8, "little")


def verdict_of(option: bytes, source: str, secrets: list[bytes], now: int) -> int:
    state = cookies.state_array(secrets)
    state[cookies.S_NOW] = now
    return int(
        cookies.judge(np.frombuffer(option, np.uint8), 0, len(option), *_address(source), state)[0]
    )


# -- the construction -------------------------------------------------------------------------


def test_siphash_matches_the_reference_vectors() -> None:
    # veorq/SipHash vectors.h: key 00..0f, messages 00, 00 01, ... (the first, and across blocks).
    expected = {0: 0x726FDB47DD0E0E31, 1: 0x74F839C593DC67FD, 7: 0xAB0200F58B01D137,
                8: 0x93F5F5799A932462, 15: 0xA129CA6149BE45E5, 16: 0x3F2ACC7F57C29BDB,
                63: 0x958A324CEB064572}  # fmt: skip
    key = bytes(range(16))
    k0 = np.uint64(int.from_bytes(key[:8], "little"))
    k1 = np.uint64(int.from_bytes(key[8:], "little"))
    data = np.arange(64, dtype=np.uint8)
    for length, want in expected.items():
        assert int(cookies.siphash24(k0, k1, data, length)) == want, length


@pytest.mark.parametrize(
    ("secret", "client", "source", "at", "server"),
    [
        (SECRET, "2464c4abcf10c957", "198.51.100.100", 1559731985, "010000005cf79f111f8130c3eee29480"),
        (SECRET, "2464c4abcf10c957", "198.51.100.100", 1559734385, "010000005cf7a871d4a564a1442aca77"),
        (SECRET, "fc93fc62807ddb86", "203.0.113.203", 1559734700, "010000005cf7a9acf73a7810aca2381e"),
        (OTHER, "22681ab97d52c298", "2001:db8:220:1:59de:d0f4:8769:82b8", 1559741961,
         "010000005cf7c609a6bb79d16625507a"),
    ],
    ids=["A.1", "A.2", "A.3", "A.4"],
)  # fmt: skip
def test_server_cookies_are_rfc_9018_test_vectors(
    secret: bytes, client: str, source: str, at: int, server: str
) -> None:
    assert issue(secret, bytes.fromhex(client), source, at).hex() == server


def test_returned_cookies_are_checked_as_rfc_9018_shows() -> None:
    # A.3: the client set reserved octets; they are hashed as sent.
    # Checked soon after it was made (0x5cf78f71); the example's own reply comes 1 h 52 min
    # later, past the lifetime, so the server there makes a fresh one.
    a3 = bytes.fromhex("fc93fc62807ddb8601abcdef5cf78f71a314227b6679ebf5")
    made = 0x5CF78F71
    assert verdict_of(a3, "203.0.113.203", [SECRET], made + 10) == cookies.VALID
    assert verdict_of(a3, "203.0.113.204", [SECRET], made + 10) == cookies.BAD  # another address
    assert verdict_of(a3, "203.0.113.203", [SECRET], 1559734700) == cookies.BAD  # expired
    # A.4: made with the secret rolled away from; accepted as the previous one, and renewed.
    a4 = bytes.fromhex("22681ab97d52c298010000005cf7c57926556bd0934c72f8")
    old = bytes.fromhex("dd3bdf9344b678b185a6f5cb60fca715")
    source = "2001:db8:220:1:59de:d0f4:8769:82b8"
    assert verdict_of(a4, source, [old], 1559741961) == cookies.VALID
    assert verdict_of(a4, source, [OTHER], 1559741961) == cookies.BAD
    assert verdict_of(a4, source, [OTHER, old], 1559741961) == cookies.RENEW


@pytest.mark.parametrize(
    ("age", "verdict"),
    [(0, cookies.VALID), (1799, cookies.VALID), (1800, cookies.RENEW), (3600, cookies.RENEW),
     (3601, cookies.BAD), (-300, cookies.VALID), (-301, cookies.BAD), (2**31, cookies.BAD)],
)  # fmt: skip
def test_a_cookie_holds_an_hour_and_is_renewed_after_half(age: int, verdict: int) -> None:
    client = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    for now in (NOW, 1000):  # 1000: the timestamp was made before 2**32 wrapped
        made = (now - age) % 2**32
        option = client + issue(SECRET, client, "192.0.2.7", made)
        assert verdict_of(option, "192.0.2.7", [SECRET], now) == verdict, (now, age)


def test_only_version_1_cookies_of_16_octets_are_ours() -> None:
    client = bytes(range(8))
    good = issue(SECRET, client, "192.0.2.7", NOW)
    assert verdict_of(client + good, "192.0.2.7", [SECRET], NOW) == cookies.VALID
    assert verdict_of(client + b"\x02" + good[1:], "192.0.2.7", [SECRET], NOW) == cookies.BAD
    assert verdict_of(client + good[:8], "192.0.2.7", [SECRET], NOW) == cookies.BAD
    assert verdict_of(client + good + bytes(16), "192.0.2.7", [SECRET], NOW) == cookies.BAD
    flipped = bytearray(client + good)
    flipped[-1] ^= 1
    assert verdict_of(bytes(flipped), "192.0.2.7", [SECRET], NOW) == cookies.BAD


# -- in the answers -------------------------------------------------------------------------


def _query(*options: bytes, name: str = "video.cdn.example.", payload: int = 1232) -> bytes:
    opts = [dns.edns.GenericOption(dns.edns.COOKIE, o) for o in options]
    return dns.message.make_query(name, "A", use_edns=0, payload=payload, options=opts).to_wire()


def _cookie_only_query(*options: bytes, qid: int = 0x4242) -> bytes:
    """RFC 7873 5.4: a QUERY with no question, EDNS and the COOKIE options only."""
    message = dns.message.Message(qid)
    message.flags = dns.flags.RD
    message.use_edns(
        0, payload=1232, options=[dns.edns.GenericOption(dns.edns.COOKIE, o) for o in options]
    )
    return message.to_wire()


def _reply_cookie(reply: bytes) -> bytes | None:
    message = dns.message.from_wire(reply)
    found = [o for o in message.options if o.otype == dns.edns.COOKIE]
    assert len(found) <= 1
    return found[0].client + found[0].server if found else None


@pytest.fixture(scope="module")
def engine(deployment_dir: Path) -> Engine:
    return Engine(deployment_dir)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> int:
    """Both paths read the clock through time.time: one value, so their cookies agree."""
    monkeypatch.setattr(time, "time", lambda: NOW + 0.25)
    return NOW


def test_both_paths_answer_every_cookie_alike(engine: Engine, frozen: int) -> None:
    pair = Pair(engine, engine.view, cookie_secrets=(SECRET, OTHER))
    client = bytes.fromhex("0011223344556677")
    names = [
        "video.cdn.example.",
        "origin.cdn.example.",
        "nothing.cdn.example.",
        "elsewhere.example.org.",
    ]
    for source in ("83.44.10.7", "2a02:9100:1234::9", "198.51.100.7"):
        fresh = issue(SECRET, client, source, frozen - 60)
        options: list[tuple[bytes, ...]] = [
            (), (client,), (client + fresh,),  # none, client only, valid
            (client + issue(SECRET, client, source, frozen - 2000),),  # valid, renewed
            (client + issue(SECRET, client, source, frozen - 7200),),  # expired
            (client + issue(OTHER, client, source, frozen - 60),),  # the previous secret
            (client + issue(SECRET, client, "192.0.2.99", frozen - 60),),  # another address's
            (client + bytes(8),), (client + bytes(32),),  # other lengths
            (client[:7],), (client + b"\0",), (client + bytes(7),), (client + bytes(33),), (b"",),  # malformed
            (client + fresh, client[:3]), (client[:3], client + fresh),  # only the first counts
        ]  # fmt: skip
        for name in names:
            for opts in options:
                for payload in (1232, 512):
                    pair.check(_query(*opts, name=name, payload=payload), source)
        for opts in options:
            pair.check(_cookie_only_query(*opts), source)
    assert pair.answered > pair.punted
    pair.assert_counted_alike()


def test_what_each_query_gets_back(engine: Engine, frozen: int) -> None:
    responder = Responder(engine.book, engine.model.client_map, lambda: engine.view,
                          cookie_state=cookies.state_array([SECRET]))  # fmt: skip
    client = bytes.fromhex("a1a2a3a4a5a6a7a8")
    source = "83.44.10.7"

    def ask(*options: bytes) -> tuple[int, bytes | None]:
        reply = responder.respond(_query(*options), source, True)
        assert reply is not None
        return dns.message.from_wire(reply).rcode(), _reply_cookie(reply)

    rcode, got = ask(client)
    assert rcode == dns.rcode.NOERROR and got is not None and got[:8] == client and len(got) == 24
    assert verdict_of(got, source, [SECRET], frozen) == cookies.VALID  # a cookie of ours
    assert verdict_of(got, "83.44.10.8", [SECRET], frozen) == cookies.BAD  # for this address only
    young = client + issue(SECRET, client, source, frozen - 100)
    assert ask(young) == (dns.rcode.NOERROR, young)  # echoed
    for stale in (issue(SECRET, client, source, frozen - 2000), issue(SECRET, client, source, frozen - 9000),
                  issue(OTHER, client, source, frozen)):  # fmt: skip
        rcode, got = ask(client + stale)
        assert rcode == dns.rcode.NOERROR and got != client + stale and got is not None
        assert got[:8] == client and int.from_bytes(got[12:16], "big") == frozen
    for malformed in (b"", client[:7], client + b"\0" * 7, client + bytes(33)):
        rcode, got = ask(malformed)
        assert (rcode, got) == (dns.rcode.FORMERR, None), malformed.hex()
    assert ask() == (dns.rcode.NOERROR, None)
    # Off: the option is ignored, malformed or not.
    off = Responder(engine.book, engine.model.client_map, lambda: engine.view)
    for option in (client, client[:7]):
        reply = off.respond(_query(option), source, True)
        assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.NOERROR
        assert _reply_cookie(reply) is None


def test_a_query_without_a_question_asks_for_a_cookie(engine: Engine, frozen: int) -> None:
    """RFC 7873 5.4: with cookies on, a QUERY with no question and a COOKIE option gets
    NOERROR, no question and no records, and the cookie (echoed if valid, else a fresh one),
    over UDP and TCP; without a COOKIE option, or with cookies off, it stays malformed
    (FORMERR, the header only, as RFC 9619 has it)."""
    responder = Responder(engine.book, engine.model.client_map, lambda: engine.view,
                          cookie_state=cookies.state_array([SECRET]))  # fmt: skip
    off = Responder(engine.book, engine.model.client_map, lambda: engine.view)
    client = bytes.fromhex("b1b2b3b4b5b6b7b8")
    source = "2a02:9100:1234::9"
    valid = client + issue(SECRET, client, source, frozen - 100)
    for udp in (True, False):
        for option, echoed in (
            (client, False),
            (valid, True),
            (client + issue(OTHER, client, source, frozen), False),
        ):
            reply = responder.respond(_cookie_only_query(option), source, udp)
            assert reply is not None
            message = dns.message.from_wire(reply)
            assert message.id == 0x4242 and message.rcode() == dns.rcode.NOERROR
            assert message.flags & dns.flags.QR and message.flags & dns.flags.RD
            assert not (
                message.question or message.answer or message.authority or message.additional
            )
            got = _reply_cookie(reply)
            assert got is not None and got[:8] == client and len(got) == 24
            assert (got == option) is echoed
            assert verdict_of(got, source, [SECRET], frozen) == cookies.VALID
            reason = query_log._static_reason(responder.last_query, 0, 0, 0, reply, cookies_on=True)
            assert "server cookie alone" in reason
        for header_only in (responder.respond(_cookie_only_query(), source, udp),
                            responder.respond(_cookie_only_query(client[:5]), source, udp),
                            off.respond(_cookie_only_query(client), source, udp)):  # fmt: skip
            assert header_only is not None and len(header_only) == 12
            assert header_only[3] & 0xF == dns.rcode.FORMERR and header_only[:2] == b"\x42\x42"


def test_a_valid_server_cookie_is_never_rate_limited(engine: Engine, frozen: int) -> None:
    limiter = rrl.RrlState(rrl.RrlSettings(rate=5, slip=0, allow=()))
    responder = Responder(engine.book, engine.model.client_map, lambda: engine.view, limiter=limiter,
                          cookie_state=cookies.state_array([SECRET]))  # fmt: skip
    client = bytes(range(8, 16))
    source = "83.44.10.7"
    valid = client + issue(SECRET, client, source, frozen - 10)
    forged = client + issue(OTHER, client, source, frozen - 10)
    answered = {"valid": 0, "client only": 0, "forged": 0}
    for _ in range(50):
        for kind, option in (("valid", valid), ("client only", client), ("forged", forged)):
            if responder.respond(_query(option), source, True) is not None:
                answered[kind] += 1
    assert answered["valid"] == 50
    assert answered["client only"] + answered["forged"] <= 5 + 2  # one bucket, 5/s (plus refill)


# -- the secret file -------------------------------------------------------------------------


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_secret_file_names_each_problem_by_line(tmp_path: Path) -> None:
    good = _write(
        tmp_path / "ok", f"# made 2026-12-03\n{SECRET.hex()}\n{OTHER.hex()}  # previous\n"
    )
    assert load_cookie_secrets(good, "ok") == ((SECRET, OTHER), [])
    bad = _write(tmp_path / "bad", f"{SECRET.hex()}\nnot-hex\n{'00' * 16}\n{SECRET.hex()[:30]}\n")
    secrets, problems = load_cookie_secrets(bad, "bad")
    assert secrets == ()
    assert [str(p) for p in problems] == [
        "bad:2: a cookie secret is 32 hex digits (16 octets)",
        "bad:3: an all-zero cookie secret is no secret",
        "bad:4: a cookie secret is 32 hex digits (16 octets)",
    ]
    three = _write(tmp_path / "three", f"{SECRET.hex()}\n{OTHER.hex()}\n{'11' * 16}\n")
    assert [p.message for p in load_cookie_secrets(three, "three")[1]] == [
        "at most two secrets: the current one, then the previous one"
    ]
    assert (
        "no cookie secret"
        in load_cookie_secrets(_write(tmp_path / "empty", "# none\n"), "e")[1][0].message
    )
    loose = _write(tmp_path / "loose", SECRET.hex(), mode=0o644)
    assert "chmod 600" in load_cookie_secrets(loose, "loose")[1][0].message


def test_deployment_yaml_names_the_shared_secret(tmp_path: Path) -> None:
    zones = make_deployment(tmp_path)
    settings = zones / "deployment.yaml"
    text = settings.read_text()
    assert "cookies:" not in text
    assert load_deployment(zones).cookie_secrets == ()  # each process makes its own
    _write(zones / "cookie-secret", f"{OTHER.hex()}\n{SECRET.hex()}\n")
    settings.write_text(text + "cookies:\n  secret_file: cookie-secret\n")
    assert load_deployment(zones).cookie_secrets == (OTHER, SECRET)
    # A secret: watched for changes (a rotation reloads), its hash never shown.
    assert zones / "cookie-secret" in secret_paths(zones)
    files = ConfigFiles.read(zones)
    assert files.public_hashes["cookie-secret"] == "secret: not shown"
    settings.write_text(text + "cookies:\n  secret_file: missing-secret\n")
    with pytest.raises(ConfigError, match="cookies.secret_file: no such file"):
        load_deployment(zones)
    settings.write_text(text + "cookies:\n  enabled: false\n  secret_file: cookie-secret\n")
    assert load_deployment(zones).cookies.enabled is False
