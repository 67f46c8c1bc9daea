"""A reflection attack against response rate limiting, with real clients asking beside it.

One "attacker" source (the victim's address, as a spoofer would use it) sends ``queries``
identical queries as fast as it can for ``seconds``; ``clients`` other sources, each in its
own /24, ask one query at a time (a new query once the last is answered or timed out) all
along. What comes back to the attacker is what the victim would receive: full answers, and
truncated slips. Loopback only (127.0.0.0/8 sources); bounded by count and time.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import dns.flags
import dns.message

ATTACK_SOURCE = "127.0.0.1"


@dataclass
class AttackResult:
    queries: int = 0
    full: int = 0
    truncated: int = 0
    seconds: float = 0.0
    legit_asked: int = 0
    legit_answered: int = 0
    legit_timeouts: int = 0
    legit_truncated: int = 0
    errors: list[str] = field(default_factory=list)


def _attacker(port: int, queries: int, seconds: float, result: AttackResult) -> None:
    wire = dns.message.make_query("www.cdn.example.", "A").to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ATTACK_SOURCE, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
        s.setblocking(False)
        started = time.monotonic()
        deadline = started + seconds
        sent = 0

        def drain() -> None:
            while True:
                try:
                    data = s.recv(65535)
                except BlockingIOError:
                    return
                if len(data) > 2 and data[2] & 0x02:
                    result.truncated += 1
                else:
                    result.full += 1

        pace = queries / seconds  # spread over the whole time, so the clients ask during it
        while sent < queries and time.monotonic() < deadline:
            if sent > (time.monotonic() - started) * pace:
                drain()
                time.sleep(0.001)
                continue
            for _ in range(100):
                try:
                    s.sendto(wire, ("127.0.0.1", port))
                    sent += 1
                except BlockingIOError:
                    break
            drain()
        result.seconds = time.monotonic() - started
        end = time.monotonic() + 1.0  # the last replies
        while time.monotonic() < end:
            drain()
            time.sleep(0.01)
        result.queries = sent


def _client(port: int, source: str, stop: threading.Event, result: AttackResult, lock: threading.Lock) -> None:  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(1.0)
        qid = 0
        while not stop.is_set():
            qid = (qid + 1) & 0xFFFF
            query = dns.message.make_query("www.cdn.example.", "A", id=qid)
            s.sendto(query.to_wire(), ("127.0.0.1", port))
            answered = truncated = timeout = False
            try:
                while True:
                    reply = dns.message.from_wire(s.recv(65535))
                    if reply.id == qid:
                        truncated = bool(reply.flags & dns.flags.TC)
                        answered = not truncated and bool(reply.answer)
                        break
            except TimeoutError:
                timeout = True
            except Exception as exc:  # noqa: BLE001 - counted, reported
                with lock:
                    result.errors.append(f"{source}: {exc!r}"[:200])
            with lock:
                result.legit_asked += 1
                result.legit_answered += answered
                result.legit_truncated += truncated
                result.legit_timeouts += timeout
            time.sleep(0.05)


def attack(port: int, queries: int, seconds: float, clients: int) -> AttackResult:
    result = AttackResult()
    stop = threading.Event()
    lock = threading.Lock()
    sources = [f"127.0.{10 + i}.1" for i in range(clients)]  # each its own /24
    threads = [threading.Thread(target=_client, args=(port, src, stop, result, lock), daemon=True)
               for src in sources]  # fmt: skip
    for t in threads:
        t.start()
    try:
        _attacker(port, queries, seconds, result)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
    return result
