"""Fresh TCP queries from a new client, one at a time, each on a new connection, timed.

    python -m loadtest.hardening.probe PORT COUNT INTERVAL_S SOURCE [DELAY_S]

Prints one JSON object: ``ms`` (each query's time from connect to the whole reply; null for
one that failed or took over TIMEOUT_S) and ``errors``. Run as its own process so that the
times are not the bench's own scheduling (its slow-connection loop holds the GIL).
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

import dns.exception
import dns.message

TIMEOUT_S = 2.0


def one(port: int, source: str, wire: bytes) -> float | None:
    started = time.perf_counter()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT_S)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        data = b""
        while len(data) < 2 or len(data) < 2 + struct.unpack_from("!H", data)[0]:
            chunk = sock.recv(65535)
            if not chunk:
                return None
            data += chunk
    reply = dns.message.from_wire(data[2:])
    if reply.id != struct.unpack_from("!H", wire)[0]:
        return None
    return (time.perf_counter() - started) * 1000.0


def main(argv: list[str]) -> int:
    port, count, interval, source = int(argv[0]), int(argv[1]), float(argv[2]), argv[3]
    time.sleep(float(argv[4]) if len(argv) > 4 else 0.0)  # the slow clients connect first
    out: list[float | None] = []
    errors: list[str] = []
    for i in range(count):
        query = dns.message.make_query("video.cdn.example.", "A", id=(i * 7919 + 1) & 0xFFFF)
        try:
            ms = one(port, source, query.to_wire())
        except (OSError, dns.exception.DNSException) as exc:
            ms = None
            if len(errors) < 10:
                errors.append(f"{type(exc).__name__}: {exc}")
        out.append(None if ms is None else round(ms, 3))
        time.sleep(interval)
    print(json.dumps({"ms": out, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
