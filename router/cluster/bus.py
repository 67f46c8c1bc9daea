"""The connection to NATS: the heartbeat stream, the override bucket, the state and demand
subjects, and what arrives on them, handed to the ``BusHandlers`` of the runtime.

Subjects (``docs/cluster.md``):

- ``router.heartbeat.<router>``: stream ``ROUTER_HEARTBEATS`` (memory, ``replicas``, a short
  age): each heartbeat a router verified, as the node's signed bytes, with ``Nats-Msg-Id``
  ``<node>:<boot>:<seq>`` so that the stream keeps one copy when a node sends to several
  routers. Every router reads the stream through an ordered consumer, which after a cut
  resumes where it stopped (the catch-up).
- KV bucket ``router_admin`` (file storage, ``replicas``): the operators' overrides, one key
  per node; every router watches it, so a PUT on one applies on all and outlives them.
- ``router.state.<router>`` (core NATS, every second and at once on a change): config version,
  table generation and digest, isolated or not, the nodes its probes fail.
- ``router.demand.<router>`` (core NATS, every second): its per-group query rates.

Losing the bus is not an error: the client reconnects for ever (to any server of the list)
and the runtime keeps serving meanwhile; ``connected`` says which it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import nats
from nats.errors import Error as NatsError
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError

from router.cluster.fast_receive import HeartbeatClient

log = logging.getLogger("router.cluster")

STREAM = "ROUTER_HEARTBEATS"
BUCKET = "router_admin"
HEARTBEAT_SUBJECT = "router.heartbeat"
STATE_SUBJECT = "router.state"
DEMAND_SUBJECT = "router.demand"
STREAM_MAX_AGE_S = 10.0  # a heartbeat older than the replay window (5 s) is refused anyway
DEDUP_WINDOW_S = 10.0  # two routers republish one heartbeat well within this
STREAM_MAX_BYTES = 256 << 20  # a bound on each server's memory for the stream
RECONNECT_WAIT_S = 0.5
PING_INTERVAL_S = 2  # a silent cut (no RST) is noticed after three missed pings...
MAX_OUTSTANDING_PINGS = 3
STREAM_CHECK_S = 1.0  # ...or sooner, by the stream not answering (twice in a row)
STREAM_CHECK_TIMEOUT_S = 2.0
HEARTBEAT_BATCH = 512  # republished heartbeats written per turn of the loop


class BusError(Exception):
    """A bus set-up the operator must fix (a bad URL, an unreadable credentials file)."""


@dataclass(frozen=True)
class BusSettings:
    servers: tuple[str, ...]
    router_id: str
    creds_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    replicas: int = 3


def parse_servers(text: str) -> tuple[str, ...]:
    """``nats://HOST:PORT[,HOST:PORT...]`` (``nats://`` or ``tls://`` on each, or on the first
    only) -> the URLs; BusError saying which part is wrong."""
    out = []
    scheme = "nats"
    for i, part in enumerate(p.strip() for p in text.split(",")):
        if not part:
            raise BusError(f"--bus: item {i + 1} of {text!r} is empty")
        url = part if "://" in part else f"{scheme}://{part}"
        split = urlsplit(url)
        if split.scheme not in ("nats", "tls"):
            raise BusError(f"--bus: {part!r}: the scheme must be nats:// or tls://")
        try:
            port = split.port
        except ValueError:
            raise BusError(f"--bus: {part!r}: the port is not a number") from None
        if not split.hostname or port is None:
            raise BusError(f"--bus: {part!r}: give HOST:PORT")
        if split.path not in ("", "/") or split.query:
            raise BusError(f"--bus: {part!r}: only HOST:PORT, no path")
        if split.username or split.password:
            raise BusError(f"--bus: {part!r}: no credentials in the URL (use --bus-creds FILE)")
        scheme = split.scheme
        out.append(f"{split.scheme}://{split.netloc}")
    return tuple(out)


def tls_context(settings: BusSettings) -> ssl.SSLContext | None:
    if settings.tls_ca is None and settings.tls_cert is None:
        return None
    try:
        context = ssl.create_default_context(
            cafile=str(settings.tls_ca) if settings.tls_ca else None
        )
        if settings.tls_cert is not None:
            context.load_cert_chain(
                str(settings.tls_cert), str(settings.tls_key) if settings.tls_key else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise BusError(f"--bus-tls-*: {exc}") from None
    return context


@dataclass
class BusHandlers:
    """What the runtime does with what arrives (each called in the event loop)."""

    # [(the node's signed bytes, the router it reached), ...]: what one read off the bus held
    heartbeats: Callable[[list[tuple[bytes, str]]], None]
    state: Callable[[bytes, str], None]  # (a state message, its router)
    demand: Callable[[bytes, str], None]
    admin: Callable[[str, bytes | None], None]  # (bucket key, entry or None when deleted)
    # usable or not, at each change: connected, and the stream answering (a server cut off
    # from its cluster's majority takes connections but has no stream to give)
    connection: Callable[[bool], None]
    admin_synced: Callable[[], None] = lambda: None  # the bucket's current entries all applied


@dataclass
class BusCounters:
    heartbeats_out: int = 0
    heartbeats_in: int = 0
    states_in: int = 0
    demand_in: int = 0
    admin_in: int = 0
    dropped_while_cut: int = 0  # heartbeats not republished: no connection
    reconnects: int = 0


@dataclass
class ClusterBus:
    settings: BusSettings
    handlers: BusHandlers
    counters: BusCounters = field(default_factory=BusCounters)
    connected: bool = False
    stream_ok: bool = False  # the stream answered the last check (or one of the two before)
    usable: bool = False  # as last told to the runtime: connected and stream_ok
    connected_url: str | None = None
    last_error: str | None = None

    def __post_init__(self) -> None:
        self._nc: nats.NATS | None = None
        self._js = None
        self._kv = None
        self._task: asyncio.Task | None = None
        self._watch_task: asyncio.Task | None = None
        self._stream_task: asyncio.Task | None = None
        self._outbox: list[tuple[bytes, str]] = []
        self._flushing = False
        self._ready = asyncio.Event()
        self._tls = tls_context(self.settings)
        self._own_subject = f"{HEARTBEAT_SUBJECT}.{self.settings.router_id}".encode()
        if self.settings.creds_file is not None and not self.settings.creds_file.is_file():
            raise BusError(f"--bus-creds: {self.settings.creds_file} is not a readable file")

    # -- life -------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background, for as long as it takes; serving does not wait."""
        self._task = asyncio.create_task(self._connect_forever(), name="bus-connect")

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self._ready.is_set()

    async def close(self) -> None:
        for task in (self._task, self._watch_task, self._stream_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.drain(), 2.0)
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def _connect_forever(self) -> None:
        wait = RECONNECT_WAIT_S
        while True:
            try:
                await self._connect()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable, refused, a JetStream not ready yet
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "bus: not connected (%s); trying again in %.1f s", self.last_error, wait
                )
                if self._nc is not None:
                    with contextlib.suppress(Exception):
                        await self._nc.close()
                    self._nc = None
                await asyncio.sleep(wait)
                wait = min(wait * 2, 5.0)

    async def _connect(self) -> None:
        s = self.settings
        self._nc = HeartbeatClient()
        await self._nc.connect(
            servers=list(s.servers),
            name=f"router {s.router_id}",
            user_credentials=str(s.creds_file) if s.creds_file else None,
            tls=self._tls,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT_S,
            ping_interval=PING_INTERVAL_S,
            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            no_echo=True,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            error_cb=self._on_error,
        )
        nc = self._nc
        self._js = nc.jetstream(timeout=5.0)
        await self._ensure_stream()
        self._kv = await self._ensure_bucket()
        await nc.subscribe(f"{STATE_SUBJECT}.*", cb=self._on_state)
        await nc.subscribe(f"{DEMAND_SUBJECT}.*", cb=self._on_demand)
        heartbeats = await self._js.subscribe(
            f"{HEARTBEAT_SUBJECT}.>", stream=STREAM, cb=self._on_heartbeat,
            ordered_consumer=True, deliver_policy=js_api.DeliverPolicy.NEW,
            idle_heartbeat=2.0,
        )  # fmt: skip
        nc.take(heartbeats, self._on_stream_heartbeats)
        self._rewatch()
        self._stream_task = asyncio.create_task(self._check_stream(), name="bus-stream-check")
        self.stream_ok = True
        self._set_connected(True, nc.connected_url)
        self.last_error = None
        self._ready.set()
        log.info("bus: connected to %s as router %s", self.connected_url, s.router_id)

    async def _ensure_stream(self) -> None:
        config = js_api.StreamConfig(
            name=STREAM, subjects=[f"{HEARTBEAT_SUBJECT}.>"],
            storage=js_api.StorageType.MEMORY, num_replicas=self.settings.replicas,
            max_age=STREAM_MAX_AGE_S, duplicate_window=DEDUP_WINDOW_S,
            max_bytes=STREAM_MAX_BYTES, discard=js_api.DiscardPolicy.OLD,
        )  # fmt: skip
        try:
            await self._js.add_stream(config)
            return
        except BadRequestError as exc:
            if "already in use" not in str(exc.description):
                raise BusError(
                    f"bus: the stream {STREAM} could not be made: {exc.description}"
                ) from None
        try:
            await self._js.update_stream(config)  # another router made it with older settings
        except NatsError as exc:
            # Made by hand (or by a newer router) with settings that cannot change in place,
            # e.g. file storage: it still carries the heartbeats; say so and use it.
            info = await self._js.stream_info(STREAM)
            if f"{HEARTBEAT_SUBJECT}.>" not in (info.config.subjects or []):
                raise BusError(
                    f"bus: the stream {STREAM} exists without the subject {HEARTBEAT_SUBJECT}.>"
                ) from None
            log.warning("bus: using the stream %s as it is (%s storage, %s replicas): %s", STREAM,
                        info.config.storage, info.config.num_replicas, exc)  # fmt: skip

    async def _ensure_bucket(self):  # noqa: ANN202
        try:
            return await self._js.key_value(BUCKET)
        except (NotFoundError, nats.js.errors.BucketNotFoundError):
            pass
        return await self._js.create_key_value(
            bucket=BUCKET, history=1, replicas=self.settings.replicas,
            storage=js_api.StorageType.FILE, description="router overrides and drains",
        )  # fmt: skip

    # -- connection state -------------------------------------------------------------------

    def _set_connected(self, connected: bool, url: str | None = None) -> None:
        self.connected = connected
        self.connected_url = str(url.geturl() if hasattr(url, "geturl") else url) if url else None
        self._report()

    def _rewatch(self) -> None:
        """A new watch of the bucket, which begins with every entry: after a cut the old
        watch's consumer may be gone from the servers, and its watcher would wait for ever."""
        if self._watch_task is not None:
            self._watch_task.cancel()
        self._watch_task = asyncio.create_task(self._watch_admin(), name="bus-admin-watch")

    def _report(self) -> None:
        usable = self.connected and self.stream_ok
        if usable == self.usable:
            return
        if usable and self._kv is not None and self._watch_task is not None:
            self._rewatch()  # back: catch up every entry (an override set meanwhile)
        self.usable = usable
        try:
            self.handlers.connection(usable)
        except Exception:
            # Called from the client's reconnect path: an exception there would end the
            # reconnecting for good.
            log.exception("bus: the runtime's handling of the connection change failed")

    async def _check_stream(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(STREAM_CHECK_S)
            if not self.connected:
                failures = 0
                continue
            try:
                await asyncio.wait_for(self._js.stream_info(STREAM), STREAM_CHECK_TIMEOUT_S)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - no answer, no leader, no stream
                failures += 1
                self.last_error = (
                    f"the stream {STREAM} does not answer: {type(exc).__name__}: {exc}"
                )
            ok = failures < 2
            if ok != self.stream_ok:
                log.warning("bus: %s", "the stream answers again" if ok else self.last_error)
            self.stream_ok = ok
            self._report()

    async def _on_disconnected(self) -> None:
        if self.connected:
            log.warning("bus: disconnected; serving on, isolated, until it is back")
        self._set_connected(False)

    async def _on_reconnected(self) -> None:
        self.counters.reconnects += 1
        nc = self._nc
        log.info("bus: reconnected to %s", nc.connected_url.geturl() if nc else "?")
        self._set_connected(True, nc.connected_url if nc else None)

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.debug("bus: %s", self.last_error)

    # -- in ---------------------------------------------------------------------------------

    async def _on_heartbeat(self, msg) -> None:  # noqa: ANN001
        self._on_stream_heartbeats([(msg.subject.encode(), msg.data)])

    def _on_stream_heartbeats(self, batch: list[tuple[bytes, bytes]]) -> None:
        """Heartbeats from the stream, as (subject, packet): by fast_receive's shortcut, or
        one at a time by nats-py's own path."""
        self.counters.heartbeats_in += len(batch)
        skip = len(HEARTBEAT_SUBJECT) + 1
        own = self._own_subject
        heartbeats = [
            (packet, subject[skip:].decode()) for subject, packet in batch if subject != own
        ]
        if heartbeats:  # our own republished copies left out
            self.handlers.heartbeats(heartbeats)

    async def _on_state(self, msg) -> None:  # noqa: ANN001
        self.counters.states_in += 1
        self.handlers.state(msg.data, msg.subject[len(STATE_SUBJECT) + 1 :])

    async def _on_demand(self, msg) -> None:  # noqa: ANN001
        self.counters.demand_in += 1
        self.handlers.demand(msg.data, msg.subject[len(DEMAND_SUBJECT) + 1 :])

    async def _watch_admin(self) -> None:
        watcher = await self._kv.watchall()
        synced = False
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=3600)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                if entry is None:  # the end of the entries already there
                    if not synced:
                        synced = True
                        self.handlers.admin_synced()
                    continue
                self.counters.admin_in += 1
                deleted = entry.operation in ("DEL", "PURGE")
                try:
                    self.handlers.admin(entry.key, None if deleted else entry.value)
                except Exception:
                    log.exception("bus: applying the override entry %s failed", entry.key)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    # -- out --------------------------------------------------------------------------------

    def republish_heartbeat(self, packet: bytes, msg_id: str) -> None:
        """Queue a verified heartbeat for the stream; written at the next turn of the loop,
        in batches (a task per heartbeat would cost more than the heartbeat)."""
        if not self.connected:
            self.counters.dropped_while_cut += 1
            return
        self._outbox.append((packet, msg_id))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush_heartbeats())

    async def _flush_heartbeats(self) -> None:
        subject = f"{HEARTBEAT_SUBJECT}.{self.settings.router_id}"
        try:
            while self._outbox:
                batch, self._outbox = self._outbox[:HEARTBEAT_BATCH], self._outbox[HEARTBEAT_BATCH:]
                nc = self._nc
                for packet, msg_id in batch:
                    if nc is None or not self.connected:
                        self.counters.dropped_while_cut += 1
                        continue
                    # Core publish into the stream's subject: stored (and deduplicated by
                    # the id) without an ack round trip per heartbeat.
                    await nc.publish(subject, packet, headers={"Nats-Msg-Id": msg_id})
                    self.counters.heartbeats_out += 1
                await asyncio.sleep(0)
        except NatsError as exc:
            self.last_error = f"republishing heartbeats: {exc}"
            self._outbox.clear()
        finally:
            self._flushing = False

    async def publish_state(self, payload: bytes) -> None:
        await self._publish(f"{STATE_SUBJECT}.{self.settings.router_id}", payload)

    async def publish_demand(self, payload: bytes) -> None:
        await self._publish(f"{DEMAND_SUBJECT}.{self.settings.router_id}", payload)

    async def _publish(self, subject: str, payload: bytes) -> None:
        if self._nc is None or not self.connected:
            return
        try:
            await self._nc.publish(subject, payload)
        except NatsError as exc:
            self.last_error = f"publishing {subject}: {exc}"

    async def put_admin(self, key: str, value: bytes) -> bool:
        """Write an override to the bucket; False (and ``last_error``) when it could not be."""
        if self._kv is None or not self.connected:
            return False
        try:
            await self._kv.put(key, value)
        except Exception as exc:  # noqa: BLE001 - the caller keeps it and tries again
            self.last_error = f"writing the override of {key}: {type(exc).__name__}: {exc}"
            return False
        return True
