"""Calls out of the agent, each bounded in time, and a log of reader failures bounded in rate.

A reader that hangs or fails must never stop the heartbeats: commands run with a timeout (and
their whole process group is killed when it passes), HTTP fetches have a deadline on the whole
transfer, not only on each socket operation, and ``ReaderLog`` logs a failing reader's first
error at once, then at most once per ``every_s`` while it keeps failing, and once when it
recovers.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

log = logging.getLogger("router.agent")

MAX_OUTPUT = 64 * 1024  # of a command's output, what a reader looks at
MAX_BODY = 16 * 1024 * 1024  # of a metrics page


class ReadError(Exception):
    """A reader could not read; the message says what and where."""


def run_command(argv: Sequence[str], timeout: float) -> str:
    """The standard output of ``argv`` (no shell), which must exit 0 within ``timeout`` s.

    The command runs in a session of its own, so that on timeout every process it started is
    killed too (a ``sh -c`` whose child holds the pipe open would otherwise outlive it)."""
    try:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        raise ReadError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise ReadError(f"{argv[0]} did not finish within {timeout:g} s (killed)") from None
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()
        reason = f": {detail[-1][:200]}" if detail else ""
        raise ReadError(f"{argv[0]} exited with status {proc.returncode}{reason}")
    return out[:MAX_OUTPUT].decode(errors="replace")


# Metrics are local: never through the proxy that the environment may name.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch_url(url: str, timeout: float, max_bytes: int = MAX_BODY) -> str:
    """The body of a GET of ``url``, which must answer 200 and finish within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            chunks: list[bytes] = []
            size = 0
            while True:
                if time.monotonic() > deadline:
                    raise ReadError(f"{url}: not read within {timeout:g} s")
                chunk = response.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise ReadError(f"{url}: over {max_bytes} octets")
                chunks.append(chunk)
    except urllib.error.HTTPError as exc:
        raise ReadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise ReadError(f"{url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed URL
        raise ReadError(f"{url}: {exc}") from None
    return b"".join(chunks).decode("utf-8", errors="replace")


def describe(exc: BaseException) -> str:
    if isinstance(exc, ReadError | OSError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class ReaderLog:
    """Reader failures and notes, logged at a bounded rate (thread-safe)."""

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._failing: dict[str, int] = {}  # reader -> failures since it last read
        self._suppressed: dict[str, int] = {}
        self._last_logged: dict[str, float] = {}
        self._notes: dict[str, str] = {}

    def failed(self, reader: str, exc: BaseException, keeping: str) -> None:
        """``reader`` failed; ``keeping``: what the heartbeats report meanwhile."""
        now = self.clock()
        with self._lock:
            count = self._failing.get(reader, 0) + 1
            self._failing[reader] = count
            last = self._last_logged.get(reader)
            if last is not None and count > 1 and now - last < self.every_s:
                self._suppressed[reader] = self._suppressed.get(reader, 0) + 1
                return
            self._last_logged[reader] = now
            suppressed = self._suppressed.pop(reader, 0)
        more = f" ({suppressed} more failure(s) not logged)" if suppressed else ""
        log.warning("%s: %s; reporting %s%s", reader, describe(exc), keeping, more)

    def ok(self, reader: str) -> None:
        with self._lock:
            count = self._failing.pop(reader, 0)
            self._suppressed.pop(reader, None)
            self._last_logged.pop(reader, None)
        if count:
            log.info("%s: reading again after %d failure(s)", reader, count)

    def note(self, reader: str, text: str) -> None:
        """Log ``text`` unless it is what ``reader`` noted last (a note is a fact, not an error)."""
        with self._lock:
            if self._notes.get(reader) == text:
                return
            self._notes[reader] = text
        log.warning("%s: %s", reader, text)

    def failures(self, reader: str) -> int:
        with self._lock:
            return self._failing.get(reader, 0)
