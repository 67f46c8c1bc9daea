"""RTT to client prefixes: a TCP connect to a host in (or standing for) each prefix.

``--rtt-target PREFIX=ADDR:PORT``: every round (``--rtt-interval``) the agent connects to every
target at once, each bounded by ``--rtt-timeout``, and reports ``(PREFIX, ms)`` for each that
answered (a completed handshake or a refusal both took one round trip). Each round's samples
go out in one heartbeat only: the router averages every sample it receives, so repeating one
would weigh it more. A target that does not answer gives no sample (the router ages out what
it stops hearing about).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from router.agent.probe import connect_times, parse_ip_port

MAX_TARGETS = 64  # samples per heartbeat (docs/heartbeat.md)


@dataclass(frozen=True)
class RttRound:
    number: int
    samples: tuple[tuple[str, float], ...]


def parse_target(text: str) -> tuple[str, tuple[str, int]]:
    """``PREFIX=ADDR:PORT`` (``[V6ADDR]:PORT``); ValueError with the reason."""
    prefix, sep, target = text.partition("=")
    if not sep:
        raise ValueError(f"--rtt-target: expected PREFIX=ADDR:PORT, got {text!r}")
    try:
        network = ipaddress.ip_network(prefix.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"--rtt-target: {prefix!r} is not a client prefix: {exc}") from None
    return str(network), parse_ip_port(target.strip(), "--rtt-target")


class RttProber:
    def __init__(self, targets: list[tuple[str, tuple[str, int]]], timeout: float) -> None:
        self.targets = list(targets)
        self.timeout = timeout
        self.rounds = 0

    def read(self) -> RttRound:
        times = connect_times([address for _, address in self.targets], self.timeout)
        self.rounds += 1
        samples = tuple(
            (prefix, round(ms, 2)) for (prefix, _), ms in zip(self.targets, times) if ms is not None
        )
        return RttRound(self.rounds, samples)
