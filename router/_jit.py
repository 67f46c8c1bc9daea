"""One place for numba's jit options, so no kernel hard-codes its own flags.

fastmath stays off: scores are compared for ties, and reassociated float sums could
order equal-scored nodes differently from the numpy reference.
"""

JIT_OPTIONS = {"cache": True, "nogil": True, "fastmath": False}
