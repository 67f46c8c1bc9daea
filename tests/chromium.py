"""Headless Chromium for tests: open a page, read back its DOM after scripts ran, or screenshot it.

Every run gets a fresh profile (``--user-data-dir``) so runs share no state, and its own process
session, so the browser and every helper process it forks are ended together, also on timeout.
``--no-sandbox`` because the tests run as root, where Chromium refuses its sandbox;
``--virtual-time-budget`` lets the page's load handlers run before the DOM is dumped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
BASE_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
)


def chromium_binary() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _url(url_or_path: str | Path) -> str:
    text = str(url_or_path)
    if "://" in text:
        return text
    return Path(text).resolve().as_uri()


def _run(args: list[str], timeout_s: float, user_data_dir: Path | None) -> str:
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError(f"no Chromium found on PATH (looked for {', '.join(CANDIDATES)})")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as scratch:
        profile = Path(user_data_dir) if user_data_dir is not None else Path(scratch)
        profile.mkdir(parents=True, exist_ok=True)
        cmd = [binary, *BASE_FLAGS, f"--user-data-dir={profile}", *args]
        # A session of its own: on timeout the whole group goes, not only the launcher.
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            out, err = proc.communicate()
            raise RuntimeError(
                f"chromium timed out after {timeout_s} s: {' '.join(cmd)}\n{err[-4000:]}"
            ) from None
        finally:
            _kill_group(proc.pid)  # helpers (crashpad, zygote) may outlive the browser
        if proc.returncode != 0:
            raise RuntimeError(
                f"chromium exited with {proc.returncode}: {' '.join(cmd)}\n{err[-4000:]}"
            )
        return out


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def dump_dom(
    url_or_path: str | Path, timeout_s: float = 60, user_data_dir: Path | None = None
) -> str:
    """The page's DOM as serialized after load (and its load handlers) ran."""
    return _run(["--dump-dom", _url(url_or_path)], timeout_s, user_data_dir)


def screenshot(path: str | Path, out_png: str | Path, width: int = 1280, height: int = 2400,
               timeout_s: float = 60, user_data_dir: Path | None = None) -> Path:  # fmt: skip
    """A PNG of the page's first ``width`` x ``height`` pixels; returns ``out_png``."""
    out = Path(out_png).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [f"--screenshot={out}", f"--window-size={width},{height}", "--hide-scrollbars", _url(path)],
        timeout_s,
        user_data_dir,
    )
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {out}")
    return out


class LiveBrowser:
    """A headless Chromium kept open and driven over the DevTools protocol, for pages that
    change by themselves (the status page): navigate once, then read the live DOM at will.

    Real time, not virtual time: the page's own timers run as they would for a person.
    Use as a context manager; the browser's whole process group ends on exit.
    """

    def __init__(self, profile: Path, timeout_s: float = 30) -> None:
        import asyncio

        binary = chromium_binary()
        if binary is None:
            raise RuntimeError(f"no Chromium found on PATH (looked for {', '.join(CANDIDATES)})")
        profile.mkdir(parents=True, exist_ok=True)
        flags = [f for f in BASE_FLAGS if not f.startswith("--virtual-time-budget")]
        cmd = [binary, *flags, f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
               "--remote-debugging-port=0", "about:blank"]  # fmt: skip
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        self._loop = asyncio.new_event_loop()
        self._next_id = 0
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + timeout_s
            while not (port_file.is_file() and port_file.read_text().strip()):
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError(f"chromium did not open its DevTools port: {' '.join(cmd)}")
                time.sleep(0.05)
            port = int(port_file.read_text().split()[0])
            self._session, self._ws = self._loop.run_until_complete(self._connect(port))
        except BaseException:
            self.close()
            raise

    async def _connect(self, port: int):  # noqa: ANN202
        import aiohttp

        session = aiohttp.ClientSession()
        async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t.get("type") == "page")
        return session, await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)

    async def _call(self, method: str, params: dict) -> dict:
        self._next_id += 1
        await self._ws.send_json({"id": self._next_id, "method": method, "params": params})
        while True:
            message = await self._ws.receive_json(timeout=30)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def navigate(self, url: str) -> None:
        self._loop.run_until_complete(self._call("Page.navigate", {"url": url}))

    def evaluate(self, expression: str) -> object:
        """The value of a JavaScript expression in the page (JSON-serialisable values)."""
        result = self._loop.run_until_complete(
            self._call(
                "Runtime.evaluate",
                {"expression": expression, "returnByValue": True, "awaitPromise": True},
            )
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 15) -> object:
        """Poll until ``expression`` is truthy; return its value (raise on timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true within {timeout_s} s: {expression}")
            time.sleep(0.1)

    def close(self) -> None:
        async def shut() -> None:
            if getattr(self, "_ws", None) is not None:
                await self._ws.close()
            if getattr(self, "_session", None) is not None:
                await self._session.close()

        try:
            self._loop.run_until_complete(shut())
        finally:
            self._loop.close()
            _kill_group(self._proc.pid)
            self._proc.wait(timeout=10)
            if self._proc.stderr is not None:
                self._proc.stderr.close()

    def __enter__(self) -> LiveBrowser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
