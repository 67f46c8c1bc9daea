"""The heartbeat stream's receive path, short-cut: every router reads every node's heartbeat
from the bus (20,000 a second at the design size), and nats-py's general path (headers parsed
into a dict, a ``Msg`` built, a queue, a task) cost about as much per message as verifying the
heartbeat itself (docs/cluster.md, "Telemetry CPU").

``HeartbeatClient`` is nats-py's client with one change: a data message of the one
subscription handed to ``take`` goes straight to a plain callback with its subject and
payload (and its parser reads that subscription's messages off the front of what arrived
without a regular expression each). The shortcut keeps the ordered consumer's bookkeeping exactly as nats-py does it
(the stream and consumer sequences, what idle heartbeats and flow control compare against);
anything it does not recognise (a control message, a gap in the consumer sequence, a reply
subject of another layout, a nats-py whose internals moved) goes down nats-py's own path,
unchanged, so a gap still resets the consumer where it stopped.

It leans on nats-py internals (``_process_msg``, the subscription's ``_jsi``): the version is
pinned in pyproject.toml, ``compatible()`` checks the attributes at start (without them the
router logs it and takes the general path), and tests/test_cluster_fast_receive.py holds
both paths to the same result against a real server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.aio.client import Client
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

log = logging.getLogger("router.cluster")

# $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>
_ACK_TOKENS = 9
_ACK_PREFIX = (b"$JS", b"ACK")
_JSI_FIELDS = ("_dseq", "_sseq", "_active", "_ordered", "track_sequences")


class HeartbeatClient(Client):
    def __init__(self) -> None:
        super().__init__()
        self._ps = _HeartbeatParser(self)
        self._fast_sub = None
        self._fast_cb: Callable[[list[tuple[bytes, bytes]]], None] | None = None
        self._batch: list[tuple[bytes, bytes]] = []  # taken, not yet handed on
        self.fast_taken = 0  # messages that took the shortcut
        self.general_taken = 0  # messages of that subscription that went nats-py's way

    def take(self, push_sub, cb: Callable[[list[tuple[bytes, bytes]]], None]) -> bool:  # noqa: ANN001
        """Send the data messages of ``push_sub`` (what ``js.subscribe`` returned) to
        ``cb([(subject, payload), ...])``, all of one read in one call, in order; False (and the general path kept) when this nats-py does not
        look like the one the shortcut was written for."""
        sub = getattr(push_sub, "_sub", None)  # the connection's own subscription inside it
        if sub is None or not compatible(sub):
            log.warning(
                "bus: this nats-py's subscription internals are not the pinned version's: "
                "heartbeats take the general (slower) receive path"
            )
            return False
        self._fast_sub, self._fast_cb = sub, cb
        return True

    async def _process_msg(self, sid, subject, reply, data, headers) -> None:  # noqa: ANN001
        if not self._took(sid, subject, reply, data):
            self.hand_on()
            await super()._process_msg(sid, subject, reply, data, headers)

    def hand_on(self) -> None:
        """Give the callback what was taken so far (the parser calls it after each read)."""
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        try:
            self._fast_cb(batch)  # type: ignore[misc]
        except Exception:  # a bad heartbeat handler must never stop the connection's reading
            log.exception("bus: handling heartbeats from the stream failed")

    def _took(self, sid: int, subject: bytes, reply: bytes, data: bytes) -> bool:
        """True when the message was the heartbeat subscription's next data message, and has
        been handed on; False: nats-py's own path must take it."""
        sub = self._fast_sub
        if sub is None or sid != sub._id:
            return False
        jsi = sub._jsi
        tokens = reply.split(b".") if data and reply else ()
        if len(tokens) != _ACK_TOKENS or (tokens[0], tokens[1]) != _ACK_PREFIX:
            self.general_taken += 1  # control messages (no data), or not a stream message
            return False
        dseq = int(tokens[6])
        if dseq != jsi._dseq:
            self.general_taken += 1  # a gap: nats-py resets the ordered consumer
            return False
        # What nats-py does for an ordered consumer's data message, without the Msg and queue.
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        sub._received += 1
        jsi._active = True
        jsi._dseq = dseq + 1
        jsi._sseq = int(tokens[5])
        jsi.track_sequences(reply.decode())
        self.fast_taken += 1
        self._batch.append((subject, data))
        return True


class _HeartbeatParser(Parser):
    """nats-py's parser, reading whole ``HMSG``s with a reply subject off the front of the
    buffer by hand; whatever else comes first (or a message cut at the end of a read, once
    its line is whole) is left to nats-py's parser as it stands."""

    nc: HeartbeatClient

    async def parse(self, data: bytes = b"") -> None:
        nc = self.nc
        buf = self.buf
        buf.extend(data)
        while self.state == AWAITING_CONTROL_LINE and buf.startswith(b"HMSG "):
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return  # the line is not all here yet
            fields = buf[5:line_end].split()
            if len(fields) != 5:  # subject sid reply header-size total-size
                break
            start = line_end + 2
            header_size, total = int(fields[3]), int(fields[4])
            if len(buf) < start + total + 2:
                return  # the message is not all here yet
            sid, subject, reply = int(fields[1]), bytes(fields[0]), bytes(fields[2])
            payload = bytes(buf[start + header_size : start + total])
            headers = buf[start : start + header_size]  # read only if nats-py's path takes it
            del buf[: start + total + 2]
            if not nc._took(sid, subject, reply, payload):
                nc.hand_on()  # what came before it goes first
                await Client._process_msg(nc, sid, subject, reply, payload, bytes(headers))
        nc.hand_on()
        await super().parse()
        nc.hand_on()


def compatible(sub) -> bool:  # noqa: ANN001
    jsi = getattr(sub, "_jsi", None)
    return (
        jsi is not None
        and getattr(jsi, "_ordered", False)
        and all(hasattr(jsi, name) for name in _JSI_FIELDS)
        and hasattr(sub, "_received")
        and hasattr(sub, "_id")
    )
