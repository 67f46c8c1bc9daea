"""The figures: medians over the runs, ratios to the peers, targets, the table and the JSON.

``CONTRACT_KEYS`` are the JSON keys other work relies on (numbers, or null with a
``*_note``); ``finish`` derives every flat key from the per-server medians, and
``format_table`` prints them side by side.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time

from loadtest.throughput.dnsperf import (
    DNSPERF_ARGS,
    OVERLOAD_ARGS,
    OVERLOAD_CORES,
    RETRY_SHARE,
    Run,
    disturbed,
)
from loadtest.throughput.servers import REPO

INTERFERENCE_WARN = 0.05  # other busy time on the server's core, share of a run, worth a warning
# cpu_vs_gdnsd: the router with source addressing, RRL and cookies on against gdnsd (issue 17).
TARGETS = {"qps_vs_gdnsd": (">=", 0.8), "cpu_vs_gdnsd": ("<=", 1.0), "qps_vs_pdns": (">=", 2.0),
           "p99_half_load_ms": ("<", 1.0), "hardened_vs_loopback_qps": (">=", 0.9)}  # fmt: skip
# The same two against gdnsd at world scale (--world): gdnsd's nets map as large as the router's.
WORLD_TARGETS = {"world_qps_vs_gdnsd": (">=", 0.8), "world_cpu_vs_gdnsd": ("<=", 1.0)}
# Numbers, or null when not measured (a peer missing: its *_note says why).
CONTRACT_KEYS = ("router_qps", "gdnsd_qps", "pdns_qps", "router_cpu_us_per_query", "gdnsd_cpu_us_per_query",
                 "qps_vs_gdnsd", "cpu_vs_gdnsd", "qps_vs_pdns", "p99_half_load_ms", "wrong_answers")  # fmt: skip


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(ours: float | None, theirs: float | None, digits: int = 3) -> float | None:
    return None if ours is None or not theirs else round(ours / theirs, digits)


def interference(runs: list[dict]) -> dict:
    """How busy the cores were with something other than the server and dnsperf, per measured run."""
    measured = [r for r in runs if r["repetition"] >= 0 and r["rate_limit"] is None]
    server = [
        r["server_core_other_s"] / r["seconds"]
        for r in measured
        if r["server_core_other_s"] is not None
    ]
    load = [
        r["load_core_other_s"] / r["seconds"]
        for r in measured
        if r["load_core_other_s"] is not None
    ]
    return {
        "server_core_other_share_max": round(max(server), 3) if server else None,
        "server_core_other_share_median": round(statistics.median(server), 3) if server else None,
        "load_core_other_share_max": round(max(load), 3) if load else None,
    }


def target_table(figures: dict) -> dict:
    out = {}
    targets = {**TARGETS, **(WORLD_TARGETS if "world_router_qps" in figures else {})}
    for key, (op, bound) in targets.items():
        value = figures.get(key)
        passed = (
            None
            if value is None
            else (value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound)
        )
        out[key] = {"target": f"{op} {bound:g}", "value": value, "pass": passed}
    return out


def summarize_runs(runs: list[Run], server: str, variant: str) -> dict:
    """Medians over the maximum-rate runs of one server and variant: over the undisturbed ones
    (other load on the server's core at most RETRY_SHARE of the run) when there are any."""
    every = [
        r
        for r in runs
        if r.server == server
        and r.variant == variant
        and r.rate_limit is None
        and r.repetition >= 0
    ]
    clean = [r for r in every if not disturbed(r)]
    chosen = clean or every
    return {
        "qps": None if (v := median([r.qps for r in chosen])) is None else round(v, 1),
        "avg_latency_ms": None
        if (v := median([r.avg_latency_ms for r in chosen])) is None
        else round(v, 3),
        "p99_max_rate_ms": None
        if (v := median([r.p99_max_rate_ms for r in chosen])) is None
        else round(v, 3),
        "lost": None if not chosen else int(median([r.lost for r in chosen])),
        "cpu_us_per_query": None
        if (v := median([r.cpu_us_per_query for r in chosen])) is None
        else round(v, 2),
        "runs": len(chosen),
        "disturbed_runs_left_out": len(every) - len(chosen),
        "only_disturbed_runs": not clean and bool(every),
        "qps_all": [None if r.qps is None else round(r.qps, 1) for r in every],
        "cpu_us_all": [r.cpu_us_per_query for r in every],
        "disturbed_all": [disturbed(r) for r in every],
    }


def fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def format_table(figures: dict) -> str:
    lines = []
    labels = figures["labels"]
    for variant, title in (("ecs", "ECS variant: every query with an ECS option"),
                           ("plain", "plain variant: EDNS(0), no ECS (all from 127.0.0.1)")):  # fmt: skip
        lines.append(f"{title}; median of {figures['repetitions']} runs of {figures['seconds']:g} s "
                     f"(* = disturbed by other load on the server's core, left out when a clean run exists), "
                     f"dnsperf {' '.join(DNSPERF_ARGS)}")  # fmt: skip
        head = (
            "server",
            "qps",
            "avg ms",
            "p99 ms",
            "p99 ms @ half load",
            "lost",
            "CPU us/query",
            "qps per run",
        )
        rows = [head]
        for key in ("router", "gdnsd", "pdns", "pdns_default"):
            if key == "pdns_default" and key not in figures["servers"]:
                continue
            s = figures["servers"].get(key, {}).get(variant)
            if s is None:
                rows.append((labels.get(key, key), "not measured", "", "", "", "", "", ""))
                continue
            p99 = figures["servers"][key].get("p99_half_load_ms") if variant == "ecs" else None
            p99_text = fmt(p99, ".3f") + (
                "*" if p99 is not None and figures["servers"][key]["half_load"]["disturbed"] else ""
            )
            per_run = " ".join(
                fmt(q, ".0f") + ("*" if d else "") for q, d in zip(s["qps_all"], s["disturbed_all"])
            )
            rows.append((labels.get(key, key), fmt(s["qps"], ",.0f"), fmt(s["avg_latency_ms"], ".3f"),
                         fmt(s.get("p99_max_rate_ms"), ".3f"), p99_text,
                         fmt(s["lost"], "d"), fmt(s["cpu_us_per_query"], ".1f"), per_run))  # fmt: skip
        suffix = "" if variant == "ecs" else "_plain"
        rows.append(("router / gdnsd", fmt(figures.get(f"qps_vs_gdnsd{suffix}"), ".3f") + "x", "", "", "", "",
                     fmt(figures.get(f"cpu_vs_gdnsd{suffix}"), ".2f") + "x", ""))  # fmt: skip
        rows.append(("router / PowerDNS", fmt(figures.get(f"qps_vs_pdns{suffix}"), ".2f") + "x", "", "", "", "",
                     fmt(figures.get(f"cpu_vs_pdns{suffix}"), ".2f") + "x", ""))  # fmt: skip
        if figures.get(f"qps_vs_pdns_default{suffix}") is not None:
            rows.append(("router / PowerDNS (defaults)", fmt(figures.get(f"qps_vs_pdns_default{suffix}"), ".2f") + "x",
                         "", "", "", "", "", ""))  # fmt: skip
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
        for row in rows:
            lines.append("  " + "  ".join(str(c).ljust(w) if i in (0, 7) else str(c).rjust(w)
                                          for i, (c, w) in enumerate(zip(row, widths))))  # fmt: skip
        lines.append("")
    w2 = figures.get("router2_qps")
    lines.append(f"router, 2 workers (pinned to cores 0-1, core 0 shared with dnsperf), ECS: "
                 f"{fmt(w2, ',.0f')} qps, {fmt(figures.get('router2_cpu_us_per_query'), '.1f')} us CPU/query; "
                 f"vs 1 worker: {fmt(figures.get('workers2_vs_workers1_qps'), '.2f')}x qps")  # fmt: skip
    if figures.get("router_query_log_qps") is not None:
        lines.append(f"router, 1 worker, query log on (1 in {figures['query_log_sample']}), ECS: "
                     f"{fmt(figures['router_query_log_qps'], ',.0f')} qps, "
                     f"{fmt(figures.get('router_query_log_cpu_us_per_query'), '.1f')} us CPU/query, "
                     f"{figures.get('router_query_log_lines')} lines written; vs without the log: "
                     f"{fmt(figures.get('query_log_vs_router_qps'), '.3f')}x qps")  # fmt: skip
    if figures.get("router_loopback_qps") is not None:
        lines.append(f"router, 1 worker, on 127.0.0.1 with the sample's defaults (no pktinfo, loopback not "
                     f"rate limited), ECS: {fmt(figures['router_loopback_qps'], ',.0f')} qps, "
                     f"{fmt(figures.get('router_loopback_cpu_us_per_query'), '.1f')} us CPU/query; the hardened "
                     f"router against it: {fmt(figures.get('hardened_vs_loopback_qps'), '.3f')}x qps, "
                     f"{fmt(figures.get('hardened_vs_loopback_cpu'), '.3f')}x CPU/query")  # fmt: skip
    lines.append(f"overload (router, 1 worker, dnsperf {' '.join(OVERLOAD_ARGS)} on cores {OVERLOAD_CORES}): "
                 f"{fmt(figures.get('overload_qps'), ',.0f')} qps answered, {fmt(figures.get('overload_lost'), 'd')} "
                 f"lost by dnsperf, {fmt(figures.get('overload_kernel_drops'), 'd')} dropped by the kernel "
                 f"(socket buffer full), router alive and answering after: {figures.get('overload_router_alive')}, "
                 f"RSS {figures.get('overload_rss_mb_before')} -> {figures.get('overload_rss_mb_after')} MB")  # fmt: skip
    lines.append(f"router log lines with ERROR/Traceback: {figures.get('router_log_problems')}")
    lines.append(f"lost at half load: router {figures.get('router_lost_half_load')}, gdnsd "
                 f"{figures.get('gdnsd_lost_half_load')}, PowerDNS {figures.get('pdns_lost_half_load')}")  # fmt: skip
    lines.append(f"answers checked on every run against the independent expected answer "
                 f"({figures.get('expected_answers', {}).get('mode', '?')}):")  # fmt: skip
    for key, variants in figures.get("checks_by_server", {}).items():
        checked = sum(v["checked"] for v in variants.values())
        timeouts = sum(v["timeouts"] for v in variants.values())
        lines.append(f"  {figures['labels'].get(key, key):<44} runs {sum(v['runs'] for v in variants.values()):>2}  "
                     f"checked {checked:>5}  wrong {sum(v['wrong'] for v in variants.values()):>4}  "
                     f"timed out {timeouts:>4} ({fmt(share(timeouts, checked + timeouts), '.1%')})"
                     + (f"  differ from the router's own lookup {sum(v['oracle_wrong'] for v in variants.values())}"
                        if key.startswith("router") else ""))  # fmt: skip
    lines.append(f"router total: wrong {figures.get('wrong_answers')}, timed out {figures.get('check_timeouts')} "
                 f"of {fmt((figures.get('answers_checked') or 0) + (figures.get('check_timeouts') or 0), 'd')} sent; "
                 f"the router's own lookup disagrees with the expected answers on "
                 f"{figures.get('oracle_disagreements')} queries before any run")  # fmt: skip
    if "world_router_qps" in figures:
        lines.append("")
        lines += world_table(figures)
    lines.append("")
    lines.append("targets:")
    for key, t in figures["targets"].items():
        verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "MISS")
        lines.append(f"  {key:<22} {t['target']:<7} {fmt(t['value'], '.3f'):>8}  {verdict}")
    for note_key in (
        "gdnsd_note",
        "pdns_note",
        "router2_note",
        "router_query_log_note",
        "router_loopback_note",
        "world_note",
        "world_gdnsd_note",
        "world_pdns_note",
        "notes",
    ):
        if figures.get(note_key):
            lines.append(f"note ({note_key}): {figures[note_key]}")
    return "\n".join(lines)


def world_table(figures: dict) -> list[str]:
    """The world run beside gdnsd (and PowerDNS): qps, CPU per query, answers checked."""
    labels = figures.get("world_labels") or {}
    lines = [f"world scale ({figures.get('world_deployment')}: {figures.get('world_nodes')} nodes, "
             f"{fmt(figures.get('world_prefixes'), ',d')} client-map prefixes, {figures.get('world_groups')} groups; "
             f"gdnsd nets {fmt(figures.get('world_gdnsd_nets_entries'), ',d')} entries per map; PowerDNS "
             f"{figures.get('world_pdns_netmasks_per_record')} netmasks per record); set-up "
             f"{figures.get('world_setup_s')} s, in all {figures.get('world_duration_s')} s"]  # fmt: skip
    head = (
        "server",
        "qps ECS",
        "CPU us/q ECS",
        "qps plain",
        "CPU us/q plain",
        "checked",
        "wrong",
        "timed out",
    )
    rows = [head]
    for key in ("router", "gdnsd", "pdns"):
        if figures.get(f"world_{key}_qps") is None and key not in labels:
            continue
        rows.append((labels.get(key, key), fmt(figures.get(f"world_{key}_qps"), ",.0f"),
                     fmt(figures.get(f"world_{key}_cpu_us_per_query"), ".1f"),
                     fmt(figures.get(f"world_{key}_qps_plain"), ",.0f"),
                     fmt(figures.get(f"world_{key}_cpu_us_per_query_plain"), ".1f"),
                     fmt(figures.get(f"world_{key}_answers_checked"), "d"),
                     fmt(figures.get(f"world_{key}_wrong_answers"), "d"),
                     fmt(figures.get(f"world_{key}_check_timeouts"), "d")))  # fmt: skip
    for peer, name in (("gdnsd", "gdnsd"), ("pdns", "PowerDNS")):
        rows.append((f"router / {name}", fmt(figures.get(f"world_qps_vs_{peer}"), ".3f") + "x",
                     fmt(figures.get(f"world_cpu_vs_{peer}"), ".2f") + "x",
                     fmt(figures.get(f"world_qps_vs_{peer}_plain"), ".3f") + "x",
                     fmt(figures.get(f"world_cpu_vs_{peer}_plain"), ".2f") + "x", "", "", ""))  # fmt: skip
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    for row in rows:
        lines.append("  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                      for i, (c, w) in enumerate(zip(row, widths))))  # fmt: skip
    lines.append(f"  expected answers: {(figures.get('world_expected_answers') or {}).get('mode')}; the router's own "
                 f"lookup disagrees on {figures.get('world_oracle_disagreements')}")  # fmt: skip
    return lines


def finish(figures: dict, args: argparse.Namespace, notes: list[str], started: float) -> dict:
    s = figures.get("servers", {})

    def get(key: str, variant: str, what: str) -> float | None:
        return s.get(key, {}).get(variant, {}).get(what)

    for variant, suffix in (("ecs", ""), ("plain", "_plain")):
        for key in ("router", "gdnsd", "pdns", "pdns_default"):
            figures[f"{key}_qps{suffix}"] = get(key, variant, "qps")
            figures[f"{key}_cpu_us_per_query{suffix}"] = get(key, variant, "cpu_us_per_query")
            figures[f"{key}_avg_latency_ms{suffix}"] = get(key, variant, "avg_latency_ms")
            figures[f"{key}_p99_max_rate_ms{suffix}"] = get(key, variant, "p99_max_rate_ms")
            figures[f"{key}_lost{suffix}"] = get(key, variant, "lost")
        figures[f"qps_vs_gdnsd{suffix}"] = ratio(
            figures[f"router_qps{suffix}"], figures[f"gdnsd_qps{suffix}"]
        )
        figures[f"cpu_vs_gdnsd{suffix}"] = ratio(figures[f"router_cpu_us_per_query{suffix}"],
                                                 figures[f"gdnsd_cpu_us_per_query{suffix}"])  # fmt: skip
        figures[f"qps_vs_pdns{suffix}"] = ratio(
            figures[f"router_qps{suffix}"], figures[f"pdns_qps{suffix}"]
        )
        figures[f"cpu_vs_pdns{suffix}"] = ratio(figures[f"router_cpu_us_per_query{suffix}"],
                                                figures[f"pdns_cpu_us_per_query{suffix}"])  # fmt: skip
        figures[f"qps_vs_pdns_default{suffix}"] = ratio(
            figures[f"router_qps{suffix}"], figures[f"pdns_default_qps{suffix}"]
        )
        # pdns_shared_* were a second PowerDNS with enable-lua-records=shared; the production
        # configuration of pdns_* now has it, so they are the same server's figures.
        for what in ("qps", "cpu_us_per_query", "avg_latency_ms", "p99_max_rate_ms", "lost"):
            figures[f"pdns_shared_{what}{suffix}"] = figures[f"pdns_{what}{suffix}"]
        figures[f"qps_vs_pdns_shared{suffix}"] = figures[f"qps_vs_pdns{suffix}"]
    figures["pdns_shared_note"] = ("pdns_shared_* are pdns_*: the production configuration uses "
                                   "enable-lua-records=shared (pdns_config)")  # fmt: skip
    for key in ("router", "gdnsd", "pdns", "pdns_default"):
        figures[f"{key}_p99_half_load_ms"] = s.get(key, {}).get("p99_half_load_ms")
    figures["p99_half_load_ms"] = figures["router_p99_half_load_ms"]
    figures["pdns_shared_p99_half_load_ms"] = figures["pdns_p99_half_load_ms"]
    figures["pdns_shared_lost_half_load"] = figures.get("pdns_lost_half_load")
    figures["workers2_vs_workers1_qps"] = ratio(
        figures.get("router2_qps"), figures.get("router_qps")
    )
    figures["workers2_vs_workers1_cpu"] = ratio(
        figures.get("router2_cpu_us_per_query"), figures.get("router_cpu_us_per_query")
    )
    for peer in ("gdnsd", "pdns"):
        if figures.get(f"{peer}_qps") is None and not figures.get(f"{peer}_note"):
            figures[f"{peer}_note"] = f"{peer} not measured"
    figures["targets"] = target_table(figures)
    figures["interference"] = interference(figures.get("runs", []))
    worst = figures["interference"]["server_core_other_share_max"]
    if worst is not None and worst > INTERFERENCE_WARN:
        notes.append(f"other processes were busy on the server's core for up to {worst:.0%} of a run "
                     "(server_core_other_s in runs)"
                     + (f"; runs above {RETRY_SHARE:.0%} are marked * and left out of the medians where an "
                        "undisturbed run exists" if worst > RETRY_SHARE else ""))  # fmt: skip
    figures["notes"] = "; ".join(notes)
    figures["repetitions"] = args.repetitions
    figures["seconds"] = args.seconds
    figures["dnsperf_args"] = DNSPERF_ARGS
    figures["machine"] = {"cpu_count": os.cpu_count(), "cpus_allowed": args.cpus_at_start,
                          "platform": platform.platform(), "python": platform.python_version(),
                          "loadavg_at_end": os.getloadavg()}  # fmt: skip
    figures["source"] = source_state()
    figures["command"] = "python loadtest/bench_throughput.py " + " ".join(args.argv)
    figures["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    figures["duration_s"] = round(time.time() - started, 1)
    return figures


def source_state() -> dict:
    """The commit measured and the router files changed on top of it (read-only git calls)."""

    def git(*argv: str) -> str | None:
        try:
            done = subprocess.run(["git", "--no-optional-locks", *argv], cwd=REPO, capture_output=True, text=True,
                                  timeout=10, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    changed = git("status", "--porcelain", "--", "router")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "router_changes": None if changed is None else [line[3:] for line in changed.splitlines()]}  # fmt: skip


def share(part: int, whole: int) -> float | None:
    return None if not whole else round(part / whole, 4)


def check_figures(checks: dict[tuple[str, str], dict], prefix: str = "") -> dict:
    """The answer checks, summed: the router's (every ``router*`` server) and each peer's.

    ``wrong_answers`` differ from the independent expected answer; ``check_timeouts`` got no
    reply in 3 tries (not a pass: ``answers_not_passed`` adds them); ``oracle_wrong_answers``
    differ from the router's own lookup (a cross-check of its two paths)."""
    out: dict = {}
    by_server: dict[str, dict] = {}
    for (key, variant), c in checks.items():
        sent = c["checked"] + c["timeouts"]
        by_server.setdefault(key, {})[variant] = {
            "runs": c["runs"], "checked": c["checked"], "wrong": len(c["wrong"]), "timeouts": c["timeouts"],
            "timeout_share": share(c["timeouts"], sent), "oracle_wrong": len(c["oracle_wrong"]),
            "lead_not_reference_best": c["lead_not_best"],
        }  # fmt: skip

    def total(keys: list[str], what: str) -> int:
        return sum(by_server[k][v][what] for k in keys for v in by_server[k])

    routers = [k for k in by_server if k.startswith("router")]
    out["answers_checked"] = total(routers, "checked")
    out["wrong_answers"] = total(routers, "wrong")
    out["check_timeouts"] = total(routers, "timeouts")
    out["check_timeout_share"] = share(
        out["check_timeouts"], out["answers_checked"] + out["check_timeouts"]
    )
    out["answers_not_passed"] = out["wrong_answers"] + out["check_timeouts"]
    out["oracle_wrong_answers"] = total(routers, "oracle_wrong")
    out["wrong_answer_examples"] = [
        w for (k, _), c in checks.items() if k in routers for w in c["wrong"]
    ][:10]
    out["oracle_wrong_answer_examples"] = [
        w for (k, _), c in checks.items() if k in routers for w in c["oracle_wrong"]
    ][:10]
    peers = [k for k in by_server if k not in routers]
    out["peer_answers_checked"] = total(peers, "checked")
    for key in by_server:
        out[f"{key}_answers_checked"] = total([key], "checked")
        out[f"{key}_wrong_answers"] = total([key], "wrong")
        out[f"{key}_check_timeouts"] = total([key], "timeouts")
        out[f"{key}_check_timeout_share"] = share(
            out[f"{key}_check_timeouts"],
            out[f"{key}_answers_checked"] + out[f"{key}_check_timeouts"],
        )
        if key in peers:
            out[f"{key}_wrong_answer_examples"] = [
                w for (k, _), c in checks.items() if k == key for w in c["wrong"]
            ][:5]
    out["checks_by_server"] = by_server
    return {f"{prefix}{k}": v for k, v in out.items()}
