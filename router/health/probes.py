"""Active probes: the router's own look at each node, a second signal next to heartbeats.

``http(s)://...`` is a GET that must answer 2xx within the timeout; ``tcp://host:port`` a
connect that must succeed within the timeout. A node fails after ``probe_failures`` failed
probes in a row (see ``router.health.monitor``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp


async def probe_once(session: aiohttp.ClientSession, url: str, timeout: float) -> tuple[bool, str]:
    """(ok, what happened) for one probe of ``url``."""
    try:
        if url.startswith("tcp://"):
            parts = urlsplit(url)
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname, parts.port), timeout
            )
            writer.close()
            await writer.wait_closed()
            return True, "connected"
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
        ) as response:
            await response.read()
            return 200 <= response.status < 300, f"HTTP {response.status}"
    except TimeoutError:
        return False, f"no answer in {timeout:g} s"
    except (OSError, aiohttp.ClientError) as exc:
        return False, type(exc).__name__ if not str(exc) else str(exc)[:120]


async def run_probes(
    targets: dict[str, str],
    interval: float,
    timeout: float,
    report: Callable[[str, bool, str], None],
) -> None:
    """Probe every target every ``interval`` seconds, concurrently, until cancelled."""
    async with aiohttp.ClientSession() as session:
        while True:
            started = asyncio.get_running_loop().time()
            results = await asyncio.gather(
                *(probe_once(session, url, timeout) for url in targets.values())
            )
            for node_id, (ok, detail) in zip(targets, results):
                report(node_id, ok, detail)
            await asyncio.sleep(max(0.0, interval - (asyncio.get_running_loop().time() - started)))
