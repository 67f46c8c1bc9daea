"""One place for numba's jit options, so no kernel hard-codes its own flags.

fastmath stays off: scores are compared for ties, and reassociated float sums could
order equal-scored nodes differently from the numpy reference.

cache: every kernel is compiled once and kept on disk, so only the first start compiles
(about 30 s for the sample deployment on 2 cores; a start from the cache reaches READY in
about 2 s). The cache goes to ``NUMBA_CACHE_DIR`` when it is set (the Dockerfile and the
systemd unit in docs/operations.md: ``/var/cache/router/numba``), else to ``__pycache__``
beside each module (so script/server, script/test and ``router serve`` run by hand share
one), or to ``~/.cache/numba`` when the source tree cannot be written. A kernel that cannot be cached
would make numba warn at compile time (and fail the tests, where warnings are errors):
keep every kernel's arguments to arrays, scalars and tuples of them, and pass functions such
as ctypes' in as arguments rather than reading them as globals (router/dns/udp_batch.py).
"""

JIT_OPTIONS = {"cache": True, "nogil": True, "fastmath": False}
