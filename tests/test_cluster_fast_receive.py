"""router/cluster/fast_receive.py against a real ``nats-server`` (JetStream): the heartbeat
stream's shortcut hands on every message, in order, once; a gap in the consumer sequence still
goes nats-py's way and resets the ordered consumer where it stopped; a nats-py whose internals
do not match keeps the general path, and nothing is lost either way."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js import api

from loadtest.cluster_lab import LabError, find_nats_server
from router.cluster.fast_receive import HeartbeatClient

try:
    NATS_SERVER = find_nats_server()
except LabError as exc:  # pragma: no cover - script/bootstrap --test installs it
    pytest.skip(str(exc), allow_module_level=True)

STREAM, SUBJECTS = "FAST_TEST", "fast.>"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path / "js")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("nats-server did not listen within 10 s") from None
                time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def consume(url: str, count: int, shortcut: bool, gap_after: int | None = None) -> dict:
    """Publish ``count`` messages with ids into the stream and read them back through an
    ordered consumer on a HeartbeatClient; ``gap_after``: fake a lost message there."""
    nc = HeartbeatClient()
    await nc.connect(url, no_echo=True)
    publisher = HeartbeatClient()
    await publisher.connect(url)
    got: list[tuple[bytes, bytes]] = []
    general: list[tuple[bytes, bytes]] = []
    done = asyncio.Event()

    def on_batch(batch: list[tuple[bytes, bytes]]) -> None:
        got.extend(batch)
        if len(got) + len(general) >= count:
            done.set()

    async def on_msg(msg) -> None:  # noqa: ANN001 - nats-py's Msg
        general.append((msg.subject.encode(), msg.data))
        if len(got) + len(general) >= count:
            done.set()

    try:
        js = nc.jetstream()
        await js.add_stream(api.StreamConfig(name=STREAM, subjects=[SUBJECTS],
                                             storage=api.StorageType.MEMORY))  # fmt: skip
        sub = await js.subscribe(SUBJECTS, stream=STREAM, cb=on_msg, ordered_consumer=True,
                                 deliver_policy=api.DeliverPolicy.NEW, idle_heartbeat=1.0)  # fmt: skip
        took = nc.take(sub, on_batch) if shortcut else False
        for i in range(count):
            await publisher.publish(f"fast.r{i % 3}", b"payload %d" % i,
                                    headers={"Nats-Msg-Id": f"m{i}"})  # fmt: skip
            if gap_after is not None and i == gap_after:
                await publisher.flush()
                deadline = time.monotonic() + 5
                while len(got) + len(general) <= gap_after and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                sub._sub._jsi._dseq += 1  # the next message now looks like one came between
        await publisher.flush()
        await asyncio.wait_for(done.wait(), 15)
        await asyncio.sleep(0.3)  # anything delivered twice would arrive by now
        return {
            "took": took,
            "got": got,
            "general": general,
            "fast": nc.fast_taken,
            "general_taken": nc.general_taken,
        }
    finally:
        await publisher.close()
        await nc.close()


def payloads(messages: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [data for _, data in messages]


def test_the_shortcut_hands_on_every_message_in_order_once(server: str) -> None:
    out = asyncio.run(consume(server, 500, shortcut=True))
    assert out["took"] is True
    assert out["general"] == []  # every data message took the shortcut
    assert out["fast"] == 500
    assert payloads(out["got"]) == [b"payload %d" % i for i in range(500)]
    assert out["got"][4][0] == b"fast.r1"  # the subject, as published


def test_a_gap_goes_nats_pys_way_and_the_consumer_resumes_where_it_stopped(server: str) -> None:
    out = asyncio.run(consume(server, 300, shortcut=True, gap_after=99))
    everything = sorted(payloads(out["got"]) + payloads(out["general"]),
                        key=lambda p: int(p.split()[1]))  # fmt: skip
    # Nothing lost, nothing twice: the reset resumed after the last message handed on.
    assert everything == [b"payload %d" % i for i in range(300)]
    assert out["general_taken"] >= 1  # the faked gap did go nats-py's way
    assert out["fast"] >= 290  # after the reset, the shortcut carries on


def test_without_the_shortcut_the_general_path_delivers_the_same(server: str) -> None:
    out = asyncio.run(consume(server, 200, shortcut=False))
    assert out["took"] is False and out["got"] == [] and out["fast"] == 0
    assert payloads(out["general"]) == [b"payload %d" % i for i in range(200)]


def test_a_subscription_without_the_pinned_internals_keeps_the_general_path() -> None:
    class Bare:  # what a changed nats-py might hand back
        _sub = object()

    client = HeartbeatClient()
    assert client.take(Bare(), lambda batch: None) is False
    assert client._fast_sub is None
