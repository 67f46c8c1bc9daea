"""The protocol corners a compliance tester checks, against a running router over UDP (the
compiled loop) and TCP: NSID (RFC 5001), opcodes other than QUERY, TSIG with a key the router
does not know (RFC 8945 5.2)."""

from __future__ import annotations

import base64
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import dns.tsig
import pytest

from tests.conftest import REPO, RunningRouter, start_router

pytestmark = pytest.mark.integration

UNKNOWN_KEY = dns.tsig.Key("axfr-key.example.", base64.b64encode(b"s" * 32).decode(), "hmac-sha256")


@pytest.fixture(scope="module")
def named_router(
    deployment_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningRouter]:
    log = tmp_path_factory.mktemp("nsid") / "router.log"
    running = start_router(deployment_dir, log, "--nsid", "edge-1.fra.test", api=False, workers=1)
    yield running
    running.stop()
    assert running.process.stdout is not None
    running.process.stdout.close()


def _ask(router: RunningRouter, message: dns.message.Message, tcp: bool) -> dns.message.Message:
    if tcp:
        return dns.query.tcp(message, router.host, port=router.port, timeout=5)
    return dns.query.udp(message, router.host, port=router.port, timeout=5)


def _nsid(reply: dns.message.Message) -> list[bytes]:
    return [o.nsid for o in reply.options if o.otype == dns.edns.NSID]


@pytest.mark.parametrize("tcp", [False, True])
def test_nsid_is_the_configured_instance_id(named_router: RunningRouter, tcp: bool) -> None:
    for name, rdtype in (
        ("video.cdn.example.", "A"),
        ("nothing.cdn.example.", "A"),
        ("example.org.", "A"),
    ):
        asking = dns.message.make_query(
            name, rdtype, use_edns=0, options=[dns.edns.NSIDOption(b"")]
        )
        assert _nsid(_ask(named_router, asking, tcp)) == [b"edge-1.fra.test"], name
        silent = dns.message.make_query(name, rdtype, use_edns=0)
        assert _nsid(_ask(named_router, silent, tcp)) == []


def test_nsid_defaults_to_the_host_name(router: RunningRouter) -> None:
    asking = dns.message.make_query(
        "video.cdn.example.", "A", use_edns=0, options=[dns.edns.NSIDOption(b"")]
    )
    assert _nsid(_ask(router, asking, False)) == [socket.gethostname().encode()]


def test_an_nsid_too_long_is_refused_at_start(deployment_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "router.cli", "serve", "--zones", str(deployment_dir), "--listen", "127.0.0.1:0",
         "--nsid", "x" * 129],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--nsid is 129 octets, more than 128" in result.stderr


@pytest.mark.parametrize("tcp", [False, True])
def test_header_only_notify_is_notimp(router: RunningRouter, tcp: bool) -> None:
    packet = struct.pack("!HHHHHH", 0x4242, 0x2100, 0, 0, 0, 0)  # NOTIFY, RD set, no question
    if tcp:
        with socket.create_connection((router.host, router.port), timeout=5) as sock:
            sock.sendall(struct.pack("!H", len(packet)) + packet)
            length = struct.unpack("!H", sock.recv(2))[0]
            reply = sock.recv(length)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(packet, (router.host, router.port))
            reply = sock.recv(512)
    assert reply == struct.pack("!HHHHHH", 0x4242, 0x8000 | 0x2000 | dns.rcode.NOTIMP, 0, 0, 0, 0)


@pytest.mark.parametrize("tcp", [False, True])
def test_tsig_with_an_unknown_key_is_notauth_badkey(router: RunningRouter, tcp: bool) -> None:
    q = dns.message.make_query("video.cdn.example.", "A", use_edns=0)
    q.use_tsig(UNKNOWN_KEY)
    with pytest.raises(dns.tsig.PeerBadKey):
        _ask(router, q, tcp)  # dnspython checks the reply's TSIG: error BADKEY
