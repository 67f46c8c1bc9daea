"""DNSSEC: what signing costs the router, against PowerDNS signing its LUA answers online.

    python loadtest/bench_dnssec.py --json FILE [--smoke] [--seconds S] [--world [DIR]]

Figures (contract keys first):

- ``signed_rrsets``: the steered answer RRsets one full routing table signs (every distinct
  address set each steered name and type can be answered with), on the signing deployment;
- ``sign_table_s``: signing them, cold (nothing cached), as the publisher does after a full
  table build; ``sign_nodes`` says on how many nodes (``--world DIR``, default var/world-2196
  when it exists: 2,196 nodes, ``geodata/build_world.py --footprint-2196 --out
  var/world-2196``; else the sample);
- ``sign_incremental_ms``: one node down, the table re-planned incrementally, then signed:
  only the sets not signed before cost a signature; the median over 20 random nodes (p90
  beside it), and the busiest node (the one most answer sets hold: the worst case) apart;
- ``qps_do_vs_plain``: the router (sample zones, signed, one worker on core 1, dnsperf on
  core 0) answering the throughput mix with DO=1, over the same mix without DO: the same
  query files but for the DO bit, the same dnsperf arguments, maximum rate both;
- ``qps_do_vs_pdns``: the router's DO=1 rate over PowerDNS's (bind backend, LUA records, the
  zone signed with one ECDSA P-256 CSK: it signs each LUA answer online, with its signature
  cache), the same DO=1 query file, same run (``loadtest/dnssec/pdns_signed.py``);
- ``unbound_validated``: a validating Unbound (ECS on) with the router's trust anchor
  returns AD=1 for steered answers from several subnets and for a denial (tests/unbound.py).

A peer that cannot be had (not installable) gets null figures and a ``*_note``: never a pass.
``--smoke`` (the test suite): the sample only, 1 s runs; its figures mean little.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import dns.flags  # noqa: E402
import numpy as np  # noqa: E402

from loadtest.throughput import dnsperf, queries, servers  # noqa: E402
from router.config import dnssec_keys  # noqa: E402
from router.config.deployment import load_deployment  # noqa: E402
from router.health.state import NodeState  # noqa: E402
from router.service.compiled import compile_deployment, last_known_health, steered_signer  # noqa: E402

CONTRACT_KEYS = ("signed_rrsets", "sign_table_s", "sign_incremental_ms", "qps_do_vs_plain",
                 "qps_do_vs_pdns", "unbound_validated")  # fmt: skip
TARGETS = {
    "qps_do_vs_plain": (">=", 0.9),
    "qps_do_vs_pdns": (">=", 3.0),
    "sign_incremental_ms": ("<", 20.0),
}
# The scale: geodata/build_world.py --footprint-2196 --out var/world-2196.
WORLD = REPO / "var" / "world-2196"


def signed_copy(source: Path, root: Path) -> Path:
    """``source`` (a deployment laid out like the repo's) copied with DNSSEC keys made."""
    import shutil

    if source.resolve() == (REPO / "zones").resolve():
        from tests.conftest import make_deployment

        zones = make_deployment(root)
    else:
        zones = root / "zones"
        shutil.copytree(source, zones, symlinks=True)
        # The copy's relative paths must still reach the data beside the original.
        for item in source.parent.iterdir():
            if item.name != source.name and not (root / item.name).exists():
                (root / item.name).symlink_to(item.resolve())
    dnssec_keys.keygen(zones)
    return zones


def signing_figures(zones: Path, samples: int, seed: int = 3) -> dict:
    """sign_table_s (cold), signed_rrsets, and one node down signed incrementally: for the
    busiest node (the one most answer sets hold) and for ``samples`` random up nodes, each
    from the same table and the same signature cache (the one the full table left)."""
    deployment = load_deployment(zones)
    compiled = compile_deployment(deployment)
    health = last_known_health(deployment, compiled.model)
    states = health.states()
    planner = compiled.planner
    table = compiled.plan(states)
    signer = steered_signer(deployment, compiled.book)  # cold: nothing cached
    assert signer is not None
    started = time.perf_counter()
    signatures = signer.sign_table(table.group_set, table.set_nodes, table.split_start, table.split_set,
                                   time.time())  # fmt: skip
    sign_table_s = time.perf_counter() - started
    signed_rrsets = int((signatures.slot >= 0).sum())
    used = table.set_nodes[table.group_set[table.group_set >= 0]].ravel()
    used = used[used >= 0]
    busiest = int(np.bincount(used).argmax())
    rng = random.Random(seed)
    up = [i for i in range(len(states)) if states[i] == NodeState.UP and i != busiest]
    nodes = [busiest, *rng.sample(up, min(samples, len(up)))]
    times_ms, new_sets, kinds = [], [], set()
    for i, node in enumerate(nodes):
        if i:
            planner.build(states, None, 1)  # the same starting plans for every node
        down = states.copy()
        down[node] = NodeState.DOWN
        repaired = planner.node_down(node, down, None, 2)
        kinds.add(planner.last_kind)
        trial = signer.fork()
        started = time.perf_counter()
        trial.sign_table(repaired.group_set, repaired.set_nodes, repaired.split_start, repaired.split_set,
                         time.time())  # fmt: skip
        times_ms.append((time.perf_counter() - started) * 1000)
        new_sets.append(trial.signed_last)
    sampled = times_ms[1:] or times_ms
    return {
        "sign_nodes": len(compiled.model.node_ids),
        "signed_rrsets": signed_rrsets,
        "sign_table_s": round(sign_table_s, 4),
        "sign_table_us_per_rrset": round(sign_table_s * 1e6 / max(signed_rrsets, 1), 1),
        # The median over random nodes; the busiest node beside it (the worst case).
        "sign_incremental_ms": round(float(np.median(sampled)), 3),
        "sign_incremental_ms_p90": round(float(np.percentile(sampled, 90)), 3),
        "sign_incremental_samples": len(sampled),
        "sign_incremental_new_sets_median": int(np.median(new_sets[1:] or new_sets)),
        "sign_incremental_busiest_node_ms": round(times_ms[0], 3),
        "sign_incremental_busiest_node_new_sets": new_sets[0],
        "sign_incremental_kinds": sorted(kinds),
    }


def do_query_files(zones: Path, root: Path, count: int, seed: int) -> tuple[Path, Path, list[str]]:
    """The throughput mix with ECS, twice: DO=1 and plain, each query otherwise the same wire
    (loadtest/dnssec/queries.py); and the client subnets it uses."""
    from loadtest.dnssec.queries import mixes, variant_wires, write_query_files
    from router.steering import compile_model

    model = compile_model(load_deployment(zones))
    rng = random.Random(seed)
    zone_file, steered = queries.steered_zone(zones, model)
    inventory = queries.zone_inventory(zone_file, steered, rng)
    subnets = queries.draw_subnets(model.client_map, rng, 1000)
    files = write_query_files(
        root, variant_wires({"ecs": mixes(inventory, subnets, count, rng)["ecs"]})
    )
    return files["ecs"], files["ecs_do"], subnets


def router_qps(
    zones: Path, root: Path, plain_file: Path, do_file: Path, seconds: float, repetitions: int
) -> dict:
    server = servers.start_router(zones, root, 1, dnsperf.SERVER_CORE, "router")
    runs: dict[str, list[float]] = {"plain": [], "do": []}
    lost = {"plain": 0, "do": 0}
    try:
        for repetition in range(repetitions):
            for variant, datafile in (("plain", plain_file), ("do", do_file))[
                :: 1 if repetition % 2 == 0 else -1
            ]:
                run = dnsperf.run_dnsperf(server, datafile, seconds, variant, repetition)
                runs[variant].append(run.qps or 0.0)
                lost[variant] += run.lost
    finally:
        server.stop()
    qps = {k: float(np.median(v)) for k, v in runs.items()}
    return {"router_qps_plain": round(qps["plain"]), "router_qps_do": round(qps["do"]),
            "qps_do_vs_plain": round(qps["do"] / qps["plain"], 3) if qps["plain"] else None,
            "router_lost_plain": lost["plain"], "router_lost_do": lost["do"], "router_runs": runs}  # fmt: skip


def pdns_qps(
    zones: Path, root: Path, do_file: Path, subnets: list[str], seconds: float, repetitions: int
) -> dict:
    """PowerDNS signing its LUA answers online (loadtest/dnssec/pdns_signed.py), the same
    DO=1 file, pinned where the router was."""
    from loadtest.dnssec import pdns_signed

    missing = pdns_signed.ensure_packages()
    if missing:
        return {"pdns_qps_do": None, "pdns_note": f"PowerDNS cannot be had: {missing}"}
    try:
        server = pdns_signed.start_signed_pdns(pdns_signed.sample_peers(zones, subnets), root,
                                               cpus=dnsperf.SERVER_CORE)  # fmt: skip
    except RuntimeError as exc:
        return {"pdns_qps_do": None, "pdns_note": f"signed PowerDNS did not start: {exc}"}
    try:
        runs = [dnsperf.run_dnsperf(server, do_file, seconds, "do", r) for r in range(repetitions)]
    finally:
        server.stop()
    return {"pdns_qps_do": round(float(np.median([r.qps or 0.0 for r in runs]))),
            "pdns_lost_do": sum(r.lost for r in runs), "pdns_version": server.version}  # fmt: skip


def unbound_check(zones: Path, root: Path) -> dict:
    """A validating Unbound (tests/unbound.py, ECS on) with the zone's DS as its trust anchor:
    AD=1 for steered answers from several subnets, for an NXDOMAIN and for a NODATA."""
    from tests import unbound

    zone = "cdn.example."
    anchor = [line for line in dnssec_keys.trust_anchor_text(zones).splitlines()
              if line.startswith(f"{zone} ") and " DS " in line]  # fmt: skip
    server = servers.start_router(zones, root, 1, None, "router-unbound")
    checks = [
        ("www.cdn.example.", "A", s) for s in ("81.0.0.0/24", "213.0.0.0/24", "2a02:9000::/56")
    ]
    checks += [("www.cdn.example.", "AAAA", "193.136.0.0/24"), ("nothing-here.cdn.example.", "A", None),
               ("origin.cdn.example.", "TXT", None)]  # fmt: skip
    try:
        with unbound.Unbound(zone, server.port, anchor, root / "unbound-check") as resolver:
            results = {f"{n} {t} {e or ''}".strip(): bool(resolver.query(n, t, ecs=e).flags & dns.flags.AD)
                       for n, t, e in checks}  # fmt: skip
    except unbound.UnboundUnavailable as exc:
        return {"unbound_validated": None, "unbound_note": str(exc)}
    finally:
        server.stop()
    return {"unbound_validated": all(results.values()), "unbound_ad": results}


def targets(figures: dict) -> dict:
    out = {}
    for key, (op, limit) in TARGETS.items():
        value = figures.get(key)
        met = None if value is None else (value >= limit if op == ">=" else value < limit)
        out[key] = {"value": value, "target": f"{op} {limit:g}", "met": met}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument(
        "--smoke", action="store_true", help="1 s runs on the sample (the test suite)"
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--world", nargs="?", type=Path, const=WORLD, default=None,
                        help="sign on this deployment directory (default var/world-2196 if it exists)")  # fmt: skip
    args = parser.parse_args(argv)
    seconds, repetitions, count = (
        (1.0, 1, 2000) if args.smoke else (args.seconds, args.repetitions, 20000)
    )
    world = args.world
    if world is None and not args.smoke and (WORLD / "deployment.yaml").is_file():
        world = WORLD
    figures: dict = {"smoke": args.smoke, "seconds": seconds, "repetitions": repetitions}
    with tempfile.TemporaryDirectory(prefix="bench-dnssec-") as tmp:
        root = Path(tmp)
        sample = signed_copy(REPO / "zones", root / "sample")
        sign_zones = signed_copy(world, root / "world") if world is not None else sample
        figures.update(signing_figures(sign_zones, 3 if args.smoke else 20))
        plain_file, do_file, subnets = do_query_files(sample, root, count, seed=11)
        figures.update(router_qps(sample, root, plain_file, do_file, seconds, repetitions))
        figures.update(pdns_qps(sample, root, do_file, subnets, seconds, repetitions))
        if figures.get("pdns_qps_do"):
            figures["qps_do_vs_pdns"] = round(figures["router_qps_do"] / figures["pdns_qps_do"], 2)
        else:
            figures["qps_do_vs_pdns"] = None
        figures.update(unbound_check(sample, root))
    figures["targets"] = targets(figures)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    width = max(len(k) for k in figures)
    lines = [
        f"{k:<{width}}  {v}" for k, v in figures.items() if k not in ("targets", "router_runs")
    ]
    for key, target in figures["targets"].items():
        verdict = "n/a" if target["met"] is None else ("met" if target["met"] else "MISS")
        lines.append(f"target {key} {target['target']}: {target['value']} {verdict}")
    text = "\n".join(lines) + "\n"
    args.json.with_suffix(".txt").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
