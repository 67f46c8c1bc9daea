"""The worker processes live and die with their supervisor."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import dns.message
import dns.query

from loadtest.memory import is_flow_solver
from tests.conftest import make_deployment, start_router


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_workers_end_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """A supervisor killed with SIGKILL cannot stop its workers; they must not go on
    answering from a table nobody updates (they would hold the port and the old answers)."""
    router = start_router(make_deployment(tmp_path), tmp_path / "router.log", api=False, workers=2)
    # Every child: the two workers, and the refine's solver child if a refine has started
    # (it must end with the supervisor too).
    workers = _children(router.process.pid)
    try:
        assert len([w for w in workers if not is_flow_solver(w)]) == 2
        query = dns.message.make_query("video.cdn.example.", "A")
        assert dns.query.udp(query, router.host, port=router.port, timeout=2).answer
        os.kill(router.process.pid, signal.SIGKILL)
        router.process.wait(timeout=5)
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [w for w in workers if _alive(w)] == []
    finally:
        router.stop()
        for w in workers:  # only if the test failed: they are ours to end
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        assert router.process.stdout is not None
        router.process.stdout.close()
