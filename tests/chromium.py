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
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            out, err = proc.communicate()
            raise RuntimeError(f"chromium timed out after {timeout_s} s: {' '.join(cmd)}\n{err[-4000:]}") from None
        finally:
            _kill_group(proc.pid)  # helpers (crashpad, zygote) may outlive the browser
        if proc.returncode != 0:
            raise RuntimeError(f"chromium exited with {proc.returncode}: {' '.join(cmd)}\n{err[-4000:]}")
        return out


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def dump_dom(url_or_path: str | Path, timeout_s: float = 60, user_data_dir: Path | None = None) -> str:
    """The page's DOM as serialized after load (and its load handlers) ran."""
    return _run(["--dump-dom", _url(url_or_path)], timeout_s, user_data_dir)


def screenshot(path: str | Path, out_png: str | Path, width: int = 1280, height: int = 2400,
               timeout_s: float = 60, user_data_dir: Path | None = None) -> Path:  # fmt: skip
    """A PNG of the page's first ``width`` x ``height`` pixels; returns ``out_png``."""
    out = Path(out_png).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--screenshot={out}", f"--window-size={width},{height}", "--hide-scrollbars", _url(path)], timeout_s, user_data_dir)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {out}")
    return out
