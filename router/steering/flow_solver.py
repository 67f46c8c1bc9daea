"""OR-tools' min-cost flow, solved in a process of its own.

``SimpleMinCostFlow.solve`` holds the GIL for the whole solve (about a second at world
scale; measured: a thread beside it got no turn for the solve's length). In the router's
control process that would stop the heartbeat intake and a failure's repair for as long,
so the refine pass (``refine.py``) hands each solve to a child process: the arrays go
through a memory-mapped file in /dev/shm (numpy copies them without the GIL), a line of
text through the child's stdin and stdout, and the calling thread waits on the pipe
without holding the GIL.

The child runs this file as a script (``python -P``: numpy and OR-tools only, not the
router's packages and numba; not multiprocessing: its spawn re-runs the parent's main
script, and fork is unsafe in a threaded process), started on first use and kept for the
next solves; it ends when its stdin closes (the parent ended, or ``close``).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

_PARTS = (("tail", np.int32), ("head", np.int32), ("capacity", np.int64), ("cost", np.int64),
          ("flow", np.int64), ("supply", np.int64))  # fmt: skip


def _views(path: str, n_arcs: int, n_vertices: int, mode: str) -> dict[str, np.ndarray]:
    """The arrays of one solve, laid out one after another in the file at ``path``."""
    out, offset = {}, 0
    for name, dtype in _PARTS:
        count = n_vertices if name == "supply" else n_arcs
        out[name] = np.memmap(path, dtype=dtype, mode=mode, offset=offset, shape=(max(count, 1),))[
            :count
        ]
        offset += max(count, 1) * np.dtype(dtype).itemsize
    return out


def _size(n_arcs: int, n_vertices: int) -> int:
    return sum(max(n_vertices if name == "supply" else n_arcs, 1) * np.dtype(dtype).itemsize
               for name, dtype in _PARTS)  # fmt: skip


def solve_here(tail, head, capacity, cost, supply) -> tuple[str, np.ndarray | None]:
    """The min-cost flow in this process: ("OPTIMAL", flow per arc) or (status, None)."""
    from ortools.graph.python import min_cost_flow

    solver = min_cost_flow.SimpleMinCostFlow()
    solver.add_arcs_with_capacity_and_unit_cost(tail, head, capacity, cost)
    solver.set_nodes_supplies(np.arange(len(supply), dtype=np.int32), supply)
    status = solver.solve()
    if status != solver.OPTIMAL:
        return status.name, None
    return "OPTIMAL", solver.flows(np.arange(len(tail), dtype=np.int32))


def _return_free_memory() -> None:
    # router/_gc.py's return_free_memory; this file runs alone in the child (no package).
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def serve() -> None:
    """The child's loop: a line "PATH ARCS VERTICES" in, the solve's status out."""
    for line in sys.stdin:
        path, n_arcs, n_vertices = line.split()
        try:
            view = _views(path, int(n_arcs), int(n_vertices), "r+")
            status, flow = solve_here(view["tail"], view["head"], view["capacity"],
                                      view["cost"], view["supply"])  # fmt: skip
            if flow is not None:
                view["flow"][:] = flow
                view["flow"].flush()
            del view
        except Exception as exc:  # the parent reports it
            status = f"failed: {exc!r}".replace("\n", " ")
        _return_free_memory()  # the solver's graph is freed: its pages back to the system
        sys.stdout.write(status + "\n")
        sys.stdout.flush()


class FlowSolver:
    """A child process solving min-cost flows, one at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        self._path: str | None = None

    def solve(self, tail, head, capacity, cost, supply) -> tuple[str, np.ndarray | None]:
        """As ``solve_here``, in the child."""
        n_arcs, n_vertices = len(tail), len(supply)
        with self._lock:
            child = self._start()
            path = self._file(_size(n_arcs, n_vertices))
            view = _views(path, n_arcs, n_vertices, "r+")
            for name, array in (("tail", tail), ("head", head), ("capacity", capacity),
                                ("cost", cost), ("supply", supply)):  # fmt: skip
                np.copyto(view[name], array, casting="same_kind")
            try:
                child.stdin.write(f"{path} {n_arcs} {n_vertices}\n")
                child.stdin.flush()
                status = child.stdout.readline().strip()
            except (BrokenPipeError, OSError):
                status = ""
            if not status:
                self._stop()
                return "failed: the flow solver process ended", None
            flow = np.array(view["flow"]) if status == "OPTIMAL" else None
            del view
            return status, flow

    def close(self) -> None:
        with self._lock:
            self._stop()
            self._release_file()

    def release_file(self) -> None:
        """Remove the arrays' file (tmpfs holds its pages in memory while it exists): a
        refine calls this when it ends; the next solve makes another."""
        with self._lock:
            self._release_file()

    def _release_file(self) -> None:
        if self._path is not None:
            Path(self._path).unlink(missing_ok=True)
            self._path = None

    def _start(self) -> subprocess.Popen:
        if self._child is not None and self._child.poll() is None:
            return self._child
        self._stop()  # a child that ended: its pipes closed before the next one starts
        # -P: the script's folder (router/steering) stays off sys.path.
        self._child = subprocess.Popen(
            [sys.executable, "-P", str(Path(__file__).resolve())], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        return self._child

    def _file(self, size: int) -> str:
        if self._path is not None and Path(self._path).stat().st_size >= size:
            return self._path
        if self._path is not None:
            Path(self._path).unlink(missing_ok=True)
            self._path = None
        # The space is allocated, not only the size set: a mapped page tmpfs cannot back
        # (a container's /dev/shm is 64 MB by default) would be a SIGBUS in this process.
        # Room to grow by half: a refine's pairs grow round by round.
        places = [p for p in ("/dev/shm", tempfile.gettempdir()) if os.path.isdir(p)]
        for i, where in enumerate(places):
            handle, path = tempfile.mkstemp(prefix="router-flow-", dir=where)
            try:
                os.posix_fallocate(handle, 0, size + size // 2)
            except OSError:
                Path(path).unlink(missing_ok=True)
                if i == len(places) - 1:
                    raise
                continue
            finally:
                os.close(handle)
            self._path = path
            return path
        raise OSError("no folder for the flow solver's file")

    def _stop(self) -> None:
        if self._child is None:
            return
        child, self._child = self._child, None
        try:
            child.stdin.close()  # the child's loop ends on it
        except OSError:
            pass  # a child that is gone already
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=5)
        child.stdout.close()


_shared: FlowSolver | None = None
_shared_lock = threading.Lock()


def shared_solver() -> FlowSolver:
    """The process's one flow solver (its child started on first solve, ended at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = FlowSolver()
            atexit.register(_shared.close)
        return _shared


if __name__ == "__main__":
    serve()
