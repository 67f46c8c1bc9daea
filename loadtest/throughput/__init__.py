"""The parts of ``loadtest/bench_throughput.py``, one responsibility each.

Load driver: ``queries`` (the query mix and dnsperf's query files), ``dnsperf`` (running it,
parsing its output, the latency probe), ``proc`` (CPU accounting, RSS and kernel drops from
/proc), ``servers`` (the servers under test as processes). Peer set-up: ``peers`` (packages,
gdnsd's and PowerDNS's configuration). Answers: ``answers`` (the router's own lookup, the
reply checks). Figures: ``figures`` (medians, ratios, targets, the table, the JSON keys).
Only the public API of ``router`` is used.
"""
