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

# The DNS hot path (router/dns, the client-map lookups it calls): compiled without numba's
# reference counting. Every array these kernels touch is owned by the Python caller for the
# whole call and none is allocated inside, so counting is pure cost: with it, the atomic
# increments and decrements of NRT_incref/NRT_decref on every array view and tuple of arrays
# took 12 % of a worker's CPU under dnsperf (perf, 2026-12-04). ``_nrt`` is numba's own flag
# (its test suite uses it); tests/test_router_dns_fast_path.py checks the compiled loop holds
# no NRT_incref, so a numba that stops honouring it is caught. Such a kernel cannot allocate
# an array (it fails to compile) or return one.
HOT_PATH_OPTIONS = {**JIT_OPTIONS, "_nrt": False}
