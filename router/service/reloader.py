"""Reloading: the files -> a validated, compiled config beside the running one -> the swap.

``Reloader.reload`` (SIGHUP, a changed file, or the API) loads and compiles the files beside
the running config (``router/service/loaded.py``), starts a successor for every worker on
the same sockets, and once all of them answer, swaps the config and retires the old workers
(they answer what they took, then exit). Any problem leaves the running config in service
and is kept for ``GET /v1/config`` and the metrics. ``ReloadWatcher`` decides when to
reload, in the event loop: on SIGHUP, on the API's request, and when the files changed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from router.config import ConfigError, load_deployment
from router.dns import udp_batch
from router.dns.engine import TableView
from router.service import loaded
from router.service.config_files import ConfigFiles, fingerprint
from router.service.loaded import ConfigUnusable, LoadedConfig

if TYPE_CHECKING:
    from router.service.probes import Probes
    from router.service.supervisor import Supervisor

log = logging.getLogger("router.service")

RELOAD_TIMEOUT = 300.0  # a reload waits this long for the publisher to put it in service
READ_ATTEMPTS = 3  # files written while being read are read again this often


@dataclass
class ReloadLog:
    """What reloads did since start, for ``GET /v1/config`` and the metrics."""

    ok: int = 0
    failed: int = 0
    unchanged: int = 0
    last_attempt: dict | None = None  # time, trigger, result, version, seconds
    last_error: dict | None = None  # time, trigger, problems (path:line: message), version kept

    def record(
        self, trigger: str, result: str, version: str, started: float, problems: Sequence[str] = ()
    ) -> dict:
        now = time.time()
        attempt = {"time": now, "trigger": trigger, "result": result, "version": version,
                   "seconds": round(time.monotonic() - started, 3)}  # fmt: skip
        setattr(self, result, getattr(self, result) + 1)
        self.last_attempt = attempt
        if result == "failed":
            self.last_error = {
                "time": now,
                "trigger": trigger,
                "problems": list(problems),
                "version_kept": version,
            }
        return attempt


class Reloader:
    def __init__(self, service: Supervisor) -> None:
        self.service = service
        self.log = ReloadLog()
        self._lock = threading.Lock()  # one reload at a time

    def reload(self, trigger: str = "api", force: bool = False) -> dict:
        """Load the files again and put them in service, or keep the running config and
        say why. Returns the attempt (``result``: ok, unchanged or failed; ``problems``).
        ``force``: even if no file changed (DNSSEC: signatures made again, a key event due)."""
        with self._lock:
            started = time.monotonic()
            service = self.service
            directory = service.deployment.directory
            running = service.config.version
            running_revision = service.config.files.revision
            before = service.config.files.hashes
            new, files, problems = self._load(directory, "" if force else running_revision)
            if new is None and not problems:
                log.info("reload (%s): files unchanged (version %s)", trigger, running)
                return self.log.record(trigger, "unchanged", running, started)
            if new is not None:
                problems = self._put_in_service(new)
            if problems:
                for problem in problems:
                    log.error("reload (%s): %s", trigger, problem)
                log.error(
                    "reload (%s) failed with %d problem(s); still serving version %s",
                    trigger,
                    len(problems),
                    running,
                )
                attempt = self.log.record(trigger, "failed", running, started, problems)
                return {**attempt, "problems": problems}
            changed = {name for name, _ in set(files.hashes.items()) ^ set(before.items())}
            attempt = self.log.record(trigger, "ok", files.version, started)
            log.info("reload (%s): version %s in service on %d workers in %.2f s (files changed: %s)", trigger,
                     files.version, service.worker_count, attempt["seconds"], ", ".join(sorted(changed)))  # fmt: skip
            return attempt

    def _load(
        self, directory: Path, running: str
    ) -> tuple[LoadedConfig | None, ConfigFiles, list[str]]:
        """The new config and the files it was built from, read again while they change
        under us; no config and no problems when the files are the running version."""
        service = self.service
        files = ConfigFiles.read(directory, service.keys_file)
        for _ in range(READ_ATTEMPTS):
            if files.revision == running:
                return None, files, []
            try:
                deployment = load_deployment(directory, service.keys_file)
                new = loaded.prepare(
                    deployment,
                    None,
                    files,
                    service.worker_count,
                    service.batched,
                    service.telemetry,
                    service.telemetry_public,
                    service.nsid,
                    service.cookie_secret,
                )
            except ConfigError as exc:
                return None, files, [str(problem) for problem in exc.problems]
            except ConfigUnusable as exc:
                return None, files, [f"{directory}: {exc}"]
            except Exception as exc:  # a bug must not take the running config with it
                log.exception("reload: building the new config failed")
                return None, files, [f"{directory}: internal error building the config: {exc!r}"]
            again = ConfigFiles.read(directory, service.keys_file)
            if again.revision == files.revision:
                return new, files, []
            log.info("reload: files changed while loading; loading again")
            files = again
        return None, files, [f"{directory}: files kept changing while being loaded; try again"]

    def _put_in_service(self, new: LoadedConfig) -> list[str]:
        """In the publisher thread (it owns tables and workers)."""
        result = self.service.publisher.run(lambda: self._install(new), RELOAD_TIMEOUT)
        if result is None:
            return ["the new config was not in service in time (or the router is stopping)"]
        return [] if result == "ok" else [result]

    def _install(self, new: LoadedConfig) -> None:
        """Plan the new config's first table with the node states carried over, start a
        successor for every worker on the same sockets, and once all answer, swap the config
        and retire the old workers. If a successor cannot start, the running config stays."""
        service, publisher, workers = self.service, self.service.publisher, self.service.workers
        started = time.perf_counter()
        with service.health_lock:
            for note in loaded.carry_over(new, service.config):
                log.info("reload: %s", note)
            states = new.health.states()
            util = new.health.utilization().copy()
        new.planner.policy_down = new.policy_probes.down.copy()
        table = new.planner.build(states, util, service.table.generation + 1, for_refine=True)
        new.rtt.changed_groups.clear()  # the RTT averages carried so far are in this table
        publisher.build_seconds.observe(time.perf_counter() - started, "reload")
        if new.fast_book is not None:
            udp_batch.warm_up(new.fast_book, TableView(table))
        path = workers.write(table, new.sign(table))
        try:
            successors = workers.start_successors(new, path)
        except Exception:
            path.unlink(missing_ok=True)
            raise
        with service.health_lock, workers.lock:
            # Heartbeats kept arriving at the old health while the workers started.
            loaded.carry_over(new, service.config)
            old_workers = workers.swap(successors, new, path)
            service.config, service.table = new, table
            publisher.published_util = util
            publisher.published_at = time.monotonic()
            publisher.pending_demand = None
            # Averages fused while the successors started (carried just now) are not in
            # the first table yet: the publisher re-places their groups.
            publisher.samples_changed = bool(new.rtt.changed_groups)
            restated = not np.array_equal(new.health.states(), states)
        service.save_state()
        workers.wait_retired(old_workers)
        if restated:
            publisher.request_rebuild()  # a node changed state while the successors started


class ReloadWatcher:
    """Reloads one at a time, on SIGHUP (``wake``), on the API's request (``reload``), and
    when the config files changed and then stayed unchanged for one more look (an editor
    writing a file in several steps is not caught half-way). Every reload that puts a new
    config in service restarts the probes."""

    def __init__(self, reloader: Reloader, probes: Probes, watch_s: float, seen: tuple) -> None:
        self.reloader = reloader
        self.probes = probes
        self.watch_s = watch_s
        self.seen = seen  # the files' fingerprint when last loaded
        self.wake = asyncio.Event()
        self._lock = asyncio.Lock()

    async def reload(self, trigger: str) -> dict:
        async with self._lock:
            service = self.reloader.service
            self.seen = await asyncio.to_thread(
                fingerprint, service.deployment.directory, service.keys_file
            )
            attempt = await asyncio.to_thread(self.reloader.reload, trigger)
            if attempt["result"] == "ok":
                self.probes.restart()
            return attempt

    async def run(self) -> None:
        directory = self.reloader.service.deployment.directory
        keys_file = self.reloader.service.keys_file
        candidate = None
        # Without file watching, still wake every minute: DNSSEC re-signing is due by the clock.
        period = self.watch_s if self.watch_s > 0 else 60.0
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=period)
            except TimeoutError:
                pass
            try:
                if self.wake.is_set():
                    self.wake.clear()
                    await self.reload("SIGHUP")
                    continue
                resign_at = self.reloader.service.config.resign_at
                if resign_at is not None and time.time() >= resign_at:
                    # Signatures near their expiry, or a key to publish, use or retire now.
                    await self.reload("DNSSEC re-sign", force=True)
                    continue
                if self.watch_s <= 0:
                    continue
                current = await asyncio.to_thread(fingerprint, directory, keys_file)
                if current == self.seen:
                    candidate = None
                elif current != candidate:
                    candidate = current  # changed: reload once it holds still
                else:
                    candidate = None
                    await self.reload("file change")
            except Exception:
                log.exception("reload failed")
