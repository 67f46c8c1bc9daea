"""``loadtest``: play synthetic resolvers and failures against the router, and report.

    loadtest run SCENARIO [--duration S] [--out DIR]   play one scenario (a name or a YAML file)
    loadtest check [SCENARIO ...]                       validate scenario files (default: all shipped)
    loadtest list                                       the shipped scenarios

``run`` exits 0 when every check of the scenario's ``expect`` block passed, 1 when one failed,
2 when the run could not be made (a bad file, a router that would not start).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from loadtest.scenario import SCENARIO_DIR, find_scenario, load_scenario, scaled
from router.config.problems import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loadtest", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="play one scenario against the router; write result.json and report.html"
    )
    run.add_argument("scenario", help=f"a scenario file, or the name of one in {SCENARIO_DIR}")
    run.add_argument(
        "--duration",
        type=float,
        help="play the scenario in this many seconds (its timeline scaled alike)",
    )
    run.add_argument(
        "--out",
        type=Path,
        help="directory for result.json and report.html (default: var/loadtest/NAME-TIME)",
    )
    run.add_argument(
        "--zones", type=Path, help="deployment directory (default: the scenario's deployment)"
    )
    run.add_argument(
        "--dns", help="use a running router at HOST:PORT (loopback) instead of starting one"
    )
    run.add_argument(
        "--telemetry",
        help="with --dns: the running router's telemetry HOST:PORT, for failure scenarios",
    )
    run.add_argument(
        "--max-queries",
        type=int,
        help="stop after this many client queries (default: the scenario's)",
    )
    run.add_argument(
        "--seed",
        type=int,
        default=1,
        help="random seed of resolvers, clients and names (default 1)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress display")
    check = sub.add_parser(
        "check", help="validate scenario files: every problem as path:line: message"
    )
    check.add_argument(
        "scenarios", nargs="*", help="files or names (default: every shipped scenario)"
    )
    sub.add_parser("list", help="list the shipped scenarios")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        for path in sorted(SCENARIO_DIR.glob("*.yaml")):
            try:
                print(f"{path.stem:<20} {load_scenario(path).description.splitlines()[0]}")
            except ConfigError as exc:
                print(f"{path.stem:<20} (invalid: {exc.problems[0]})")
        return 0
    if args.command == "check":
        return cmd_check(args.scenarios)
    return cmd_run(args)


def cmd_check(names: list[str]) -> int:
    paths = [find_scenario(n) for n in names] if names else sorted(SCENARIO_DIR.glob("*.yaml"))
    bad = 0
    for path in paths:
        try:
            scenario = load_scenario(path)
            _, deployment = _deployment(path, scenario, None)
            load_scenario(path, deployment)
        except ConfigError as exc:
            bad += 1
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            continue
        print(
            f"{path}: ok ({scenario.name}, {scenario.duration_s:g} s, {len(scenario.failures)} failure(s))"
        )
    return 1 if bad else 0


def _deployment(path: Path, scenario, zones: Path | None):  # noqa: ANN001, ANN202
    """The deployment a scenario plays against, checked the way `router check` does."""
    from router.config.deployment import load_deployment
    from router.config.problems import Problem

    directory = zones if zones is not None else (path.parent / scenario.deployment).resolve()
    if not directory.is_dir():
        raise ConfigError([Problem(str(path), 0, f"deployment: {directory} is not a directory")])
    return directory, load_deployment(directory)


def cmd_run(args: argparse.Namespace) -> int:
    from loadtest.run import RouterProcess, RunError, play_scenario, start_router
    from router.service.sockets import ServiceError, parse_endpoint
    from router.steering.model import compile_model

    try:
        path = find_scenario(args.scenario)
        scenario = load_scenario(path)
        if args.max_queries is not None:
            if args.max_queries < 1:
                raise ValueError("--max-queries must be at least 1")
            scenario = scenario.model_copy(update={"max_queries": args.max_queries})
        if args.duration is not None and args.duration <= 0:
            raise ValueError("--duration must be more than 0 seconds")
        scenario, scale = scaled(scenario, args.duration)
        directory, deployment = _deployment(path, scenario, args.zones)
        load_scenario(path, deployment)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path("var/loadtest") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    model = compile_model(deployment)
    router: RouterProcess
    try:
        if args.dns:
            dns = parse_endpoint(args.dns, "--dns")
            telemetry = parse_endpoint(args.telemetry, "--telemetry") if args.telemetry else None
            for host in (dns[0],) + ((telemetry[0],) if telemetry else ()):
                if not (host.startswith("127.") or host == "::1" or host == "localhost"):
                    raise RunError(f"{host}: load tests send only to loopback (127.0.0.0/8, ::1)")
            router = RouterProcess(None, dns, telemetry, None, None)
        else:
            print(f"loadtest: starting the router on {directory} ...", file=sys.stderr)
            router = start_router(
                directory, out, scenario.router_workers, deployment.health is not None
            )
    except (RunError, ServiceError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    try:
        result = play_scenario(
            scenario, scale, path, deployment, model, router, out, args.seed, not args.no_progress
        )
    except (RunError, ValueError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    finally:
        code = router.stop()
        if code not in (None, 0):
            print(f"loadtest: the router exited with {code}; see {router.log}", file=sys.stderr)
    print(summary(result, out))
    return 0 if result["passed"] else 1


def summary(result: dict, out: Path) -> str:
    def fmt(value, unit: str = "") -> str:  # noqa: ANN001
        return (
            "-"
            if value is None
            else f"{value:,}{unit}"
            if isinstance(value, int)
            else f"{value:,.3f}{unit}"
        )

    lines = [
        f"{result['scenario']}: {result['client_queries']:,} client queries in {result['elapsed_s']:.1f} s "
        f"({result['wire_queries']:,} sent to the router, {fmt(result['cache_hit_share'])} answered from resolver caches)",
        f"  qps {fmt(result['qps'])}  latency p50 {fmt(result['latency_ms_p50'], ' ms')}  p99 {fmt(result['latency_ms_p99'], ' ms')}  "
        f"timeouts {result['timeouts']:,}",
        f"  best_node_share (first answer) {fmt(result['best_node_share'])}, in the answer "
        f"{fmt(result['best_node_in_answer_share'])} (clients: {fmt(result['client_best_node_share'])}, in the answer "
        f"{fmt(result['client_best_node_in_answer_share'])}; ECS share {fmt(result['ecs_share'])})",
        f"  overloaded_node_seconds {fmt(result['overloaded_node_seconds'])}",
    ]
    for f in result["failures"]:
        zero = (
            "never"
            if f["time_to_zero_dead_answers_ms"] is None
            else f"{f['time_to_zero_dead_answers_ms']:,.1f} ms"
        )
        lines.append(
            f"  failure at {f['at_ms'] / 1000:.2f} s, {f['label']}: answers to dead {f['answers_to_dead']:,}, "
            f"after the {f['bound_ms']:,.0f} ms bound {f['answers_to_dead_after_bound']:,}; time to zero {zero}"
        )
    for r in result["recoveries"]:
        back = ", ".join(
            f"{n} {'not back' if v is None else f'{v:,.0f} ms'}"
            for n, v in r["time_to_back_in_answers_ms"].items()
        )
        lines.append(
            f"  recovery at {r['at_ms'] / 1000:.2f} s, {r['label']}: back in answers: {back}"
        )
    for c in result["checks"]:
        lines.append(
            f"  check {c['check']}: {c['actual']} (expected {c['expected']}) {'ok' if c['ok'] else 'FAILED'}"
        )
    lines.append(
        f"  {'PASSED' if result['passed'] else 'FAILED'}; {out / 'result.json'}, {out / 'report.html'}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
