"""Parts of loadtest/bench_hardening.py: mutated packets, the flood, slow TCP clients."""
