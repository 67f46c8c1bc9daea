"""Load tests: synthetic resolvers, failure scenarios and reports (``loadtest run``).

The benchmarks beside this package (bench_*.py) are scripts run by path.
"""
