"""Load-test scenarios: YAML files an operator can copy and edit (see loadtest/README.md).

A scenario says who asks (synthetic resolvers and their clients), what they ask (the name mix),
how much over time (the traffic shape), what breaks when (simulator commands on a timeline),
and what the run must show (``expect``). Every problem is reported as ``path:line: message``,
the way ``router check`` reports the deployment's files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.config import ConfigError, Deployment, LocatedYaml, Problem, load_yaml, validate_item

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


class Resolvers(BaseModel):
    """The synthetic recursive resolvers: one loopback source address each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(default=2000, ge=1, le=60000)
    ecs_share: float = Field(default=0.85, ge=0, le=1)  # resolvers that send Client Subnet
    ipv6_client_share: float = Field(default=0.1, ge=0, le=1)  # client subnets that are IPv6 (/56)
    # Each resolver serves the clients of this many subnets (/24 or /56) of its ISP, so answers
    # cached for one client serve its neighbours, as in a real resolver.
    subnets_per_resolver: int = Field(default=32, ge=1, le=4096)
    # ASN -> weight of the resolvers placed in that ISP; default: by the ISP's client address space.
    isps: dict[int, float] | None = None
    timeout_ms: float = Field(default=1500, gt=0, le=10000)

    @model_validator(mode="after")
    def _weights(self) -> Resolvers:
        if self.isps is not None:
            if not self.isps:
                raise ValueError("isps: name at least one ASN, or leave it out")
            if any(w < 0 for w in self.isps.values()) or sum(self.isps.values()) <= 0:
                raise ValueError("isps: weights must be >= 0 and not all 0")
        return self


class Names(BaseModel):
    """What clients ask: shares of steered names, static names and typos (NXDOMAIN)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steered: float = Field(default=0.8, ge=0, le=1)
    static: float = Field(default=0.14, ge=0, le=1)
    nxdomain: float = Field(default=0.06, ge=0, le=1)
    aaaa_share: float = Field(default=0.25, ge=0, le=1)  # of A/AAAA questions, the AAAA ones
    zipf_s: float = Field(default=1.1, gt=0, le=5)  # popularity within each kind: rank^-s
    typos: int = Field(default=40, ge=1, le=10000)  # distinct misspelt names

    @model_validator(mode="after")
    def _shares(self) -> Names:
        total = self.steered + self.static + self.nxdomain
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(
                f"steered + static + nxdomain must add up to 1, they add up to {total:g}"
            )
        return self


class Traffic(BaseModel):
    """Client queries per second over time (before the resolvers' caches)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: Literal["steady", "ramp", "flash", "diurnal"]
    qps: float = Field(gt=0, le=200000)  # steady rate; ramp start; flash base; diurnal trough
    peak_qps: float | None = Field(
        default=None, gt=0, le=200000
    )  # ramp end; flash and diurnal peak
    flash_at_s: float | None = Field(default=None, ge=0)  # when the crowd starts to arrive
    flash_rise_s: float = Field(default=2.0, gt=0)  # base to peak in this long
    flash_hold_s: float = Field(default=10.0, ge=0)  # at the peak this long, then back as fast
    period_s: float | None = Field(
        default=None, gt=0
    )  # diurnal: one day compressed (default: the run)
    # Edge traffic that one client query per second stands for at the node it was sent to,
    # so answers become load against each node's capacity.
    gbps_per_qps: float = Field(default=0.5, ge=0)
    # The traffic an answer sends to a node lasts this long on average (a video session, a page
    # load), so a node's load follows its answers smoothed over this time, not second by second.
    session_s: float = Field(default=10.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _shape_fields(self) -> Traffic:
        if self.shape == "steady":
            if self.peak_qps is not None:
                raise ValueError("peak_qps: a steady shape has one rate (qps); remove peak_qps")
        elif self.peak_qps is None:
            raise ValueError(f'peak_qps: required for shape "{self.shape}"')
        if self.shape == "flash" and self.flash_at_s is None:
            raise ValueError('flash_at_s: required for shape "flash" (when the crowd arrives)')
        if self.shape != "flash" and self.flash_at_s is not None:
            raise ValueError(f'flash_at_s: only for shape "flash", not "{self.shape}"')
        return self


class Failure(BaseModel):
    """One simulator command at a time; ``repeat`` plays it again (flapping)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at_s: float = Field(ge=0)
    do: str = Field(min_length=1)  # a `router simulate-nodes` command, e.g. "power tef-mad-1 off"
    label: str | None = None
    # How long after the command the router may still name a failed node (default: from the
    # deployment's health settings: explicit reports 500 ms, silence missed heartbeats + 500 ms).
    bound_ms: float | None = Field(default=None, gt=0)
    repeat_every_s: float | None = Field(default=None, gt=0)
    repeat_times: int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="after")
    def _repeat(self) -> Failure:
        if self.repeat_times > 1 and self.repeat_every_s is None:
            raise ValueError("repeat_every_s: required when repeat_times > 1")
        return self


class Expect(BaseModel):
    """What the run must show; `loadtest run` exits 1 when a check fails."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_answers_to_dead_after_bound: int | None = Field(default=None, ge=0)
    max_timeout_share: float | None = Field(default=None, ge=0, le=1)
    min_best_node_share: float | None = Field(default=None, ge=0, le=1)  # the first answer
    min_best_node_in_answer_share: float | None = Field(default=None, ge=0, le=1)  # any answer
    max_overloaded_node_seconds: float | None = Field(default=None, ge=0)
    max_flaps_seen_by_clients: int | None = Field(default=None, ge=0)  # per failed node
    max_time_to_back_in_answers_ms: float | None = Field(default=None, gt=0)  # after a restore
    min_qps_share: float | None = Field(default=None, ge=0, le=1)  # achieved / offered wire qps


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str
    deployment: str = "../../zones"  # relative to the scenario file
    duration_s: float = Field(gt=0, le=3600)
    max_queries: int = Field(
        ge=1, le=50_000_000
    )  # client queries, cached or sent: the run stops there
    router_workers: int = Field(default=1, ge=1, le=64)  # when loadtest starts the router itself
    resolvers: Resolvers = Resolvers()
    names: Names = Names()
    traffic: Traffic
    failures: list[Failure] = []
    expect: Expect = Expect()


def load_scenario(path: Path, deployment: Deployment | None = None) -> Scenario:
    """Parse and validate one scenario file; raise ConfigError listing every problem.

    With ``deployment``, also check what only the deployment can tell: that every command
    of the timeline names its nodes, and every ISP of ``resolvers.isps`` is in the client map.
    """
    display = str(path)
    doc, problems = load_yaml(path, display)
    if doc is None or problems:
        raise ConfigError(problems)
    if not isinstance(doc.data, dict):
        raise ConfigError(
            [Problem(display, 1, "a scenario must be a mapping (name, description, traffic, ...)")]
        )
    scenario, problems = validate_item(Scenario, doc.data, doc, (), f"scenario {path.stem!r}")
    if problems or scenario is None:
        raise ConfigError(problems)
    assert isinstance(scenario, Scenario)
    problems = _timeline_problems(scenario, doc)
    if deployment is not None:
        problems += _against(scenario, doc, deployment)
    if problems:
        raise ConfigError(problems)
    return scenario


def _timeline_problems(scenario: Scenario, doc: LocatedYaml) -> list[Problem]:
    problems = []
    for i, failure in enumerate(scenario.failures):
        last = failure.at_s + (failure.repeat_times - 1) * (failure.repeat_every_s or 0.0)
        if last >= scenario.duration_s:
            what = "at_s" if failure.repeat_times == 1 else "repeat_times"
            problems.append(doc.problem(("failures", i, what), f"failures.{i}: played at {last:g} s, not before the end "
                                        f"of the run (duration_s: {scenario.duration_s:g})"))  # fmt: skip
    flash = scenario.traffic.flash_at_s
    if flash is not None and flash >= scenario.duration_s:
        problems.append(doc.problem(("traffic", "flash_at_s"), f"traffic.flash_at_s: {flash:g} s is not before the end "
                                    f"of the run (duration_s: {scenario.duration_s:g})"))  # fmt: skip
    return problems


def _against(scenario: Scenario, doc: LocatedYaml, deployment: Deployment) -> list[Problem]:
    from router.simulator import Simulator

    problems = []
    # A muted simulator of the deployment's nodes: commands are parsed and applied, never sent.
    simulator = Simulator(
        deployment.inventory,
        {n.id: (b"",) for n in deployment.inventory.nodes},
        ("127.0.0.1", 9),
        1.0,
    )
    simulator.muted = True
    try:
        for i, failure in enumerate(scenario.failures):
            try:
                simulator.command(failure.do)
            except ValueError as exc:
                problems.append(doc.problem(("failures", i, "do"), f"failures.{i}.do: {exc}"))
    finally:
        simulator.close()
    if scenario.failures and (deployment.health is None or not deployment.node_keys):
        problems.append(doc.problem(("failures",), "failures: the deployment has no health: section with node keys, "
                                    "so the node simulator cannot report to the router"))  # fmt: skip
    if scenario.resolvers.isps:
        known = {int(a) for a in deployment.client_map.groups.asn.tolist()}
        for asn in scenario.resolvers.isps:
            if asn not in known:
                problems.append(
                    doc.problem(
                        ("resolvers", "isps", asn),
                        f"resolvers.isps: AS{asn} is not in the deployment's client map",
                    )
                )
    return problems


def find_scenario(name_or_path: str) -> Path:
    """A path to a scenario file, or the name of one shipped in loadtest/scenarios/."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    shipped = SCENARIO_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"no scenario {name_or_path!r}: give a YAML file or one of: {known}")


def scaled(scenario: Scenario, duration_s: float | None) -> tuple[Scenario, float]:
    """The scenario played in ``duration_s``: every time on its timeline scaled alike.

    Bounds (bound_ms) are the router's, so they are not scaled.
    """
    if duration_s is None or duration_s == scenario.duration_s:
        return scenario, 1.0
    k = duration_s / scenario.duration_s
    traffic = scenario.traffic.model_copy(
        update={
            "flash_at_s": None
            if scenario.traffic.flash_at_s is None
            else scenario.traffic.flash_at_s * k,
            "flash_rise_s": scenario.traffic.flash_rise_s * k,
            "flash_hold_s": scenario.traffic.flash_hold_s * k,
            "period_s": None
            if scenario.traffic.period_s is None
            else scenario.traffic.period_s * k,
        }
    )
    failures = [
        f.model_copy(
            update={
                "at_s": f.at_s * k,
                "repeat_every_s": None if f.repeat_every_s is None else f.repeat_every_s * k,
            }
        )
        for f in scenario.failures
    ]
    update = {"duration_s": duration_s, "traffic": traffic, "failures": failures}
    return scenario.model_copy(update=update), k
