"""From the rows of a run to what clients experienced: the figures of result.json.

The oracle is computed from the same world the router steers by: the deployment's latency
model (measured country RTT, distance elsewhere), the on-net preference, each policy's pool
and geofence (for a policy with pools and rules: the client's first matching rule, its pool, and
the fallback the true node states lead to), and the *true* state of every node as the simulator played it (not what the
router believed). Its best node for a client is the lowest score (latency minus on-net bonus)
among the nodes truly available at that moment, with no load penalty: the ideal, so capacity
spill-over and detection delay both show as answers that miss it.

A query is judged by what the router could know about the client: its ECS subnet, or the
resolver's own address when the resolver sends no ECS (loopback here: the unknown group,
answered from the policy's default site), which is why ``ecs_share`` is printed beside it.
``best_node_share`` counts answers whose *first* address is a best node (the client goes
there while it is up); ``best_node_in_answer_share`` those naming one first or second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loadtest.play import RCODE_TIMEOUT, RCODE_UNANSWERED, Play
from loadtest.population import KIND_STEERED, Catalogue
from loadtest.scenario import Scenario
from loadtest.traffic import carried_gbps
from router.geo.clientmap import UNKNOWN_GROUP
from router.steering.model import SteeringModel
from router.steering.rank import group_components

RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
               RCODE_TIMEOUT: "timeout", RCODE_UNANSWERED: "unanswered"}  # fmt: skip
DEAD_BIN_MS = 100
RETURN_GAP_S = 1.0  # a node absent from every answer this long and then back: one flap seen
SCORE_TIE_MS = 0.5
SAME_METRO_KM = 50.0
EXPLICIT_BOUND_MS = 500.0  # a node that reports its own failure: gone from answers by then
SILENT_MARGIN_MS = 500.0


@dataclass
class Oracle:
    """Per (policy, group): every node's score, latency and distance.

    The best nodes are the available ones with the lowest score (within SCORE_TIE_MS) and,
    among those, the nearest (within SAME_METRO_KM): where latency is known only per country,
    every node of a country scores alike for its clients, and the router, like this oracle,
    breaks the tie by distance; nodes of one metro are equally good.
    """

    model: SteeringModel
    score: dict[tuple[int, int], np.ndarray]
    latency: dict[tuple[int, int], np.ndarray]
    distance: dict[tuple[int, int], np.ndarray]

    @classmethod
    def build(cls, model: SteeringModel, pairs: set[tuple[int, int]]) -> Oracle:
        n = len(model.node_ids)
        up = np.zeros(n, dtype=np.int8)
        inputs = {p: model.rank_inputs(p, up, np.zeros(n)) for p in {p for p, _ in pairs}}
        score, latency, distance = {}, {}, {}
        for p, g in pairs:
            parts = group_components(inputs[p], g)
            s = np.where(model.policies[p].in_pool, parts.score, np.inf)
            score[(p, g)] = np.where(np.isfinite(s), s, np.inf)
            latency[(p, g)] = parts.latency_ms
            distance[(p, g)] = parts.distance_km
        return cls(model, score, latency, distance)

    def allowed(self, policy: int, group: int, available: np.ndarray) -> np.ndarray:
        """bool[N]: the nodes the group may use when exactly ``available`` are up.

        Written from the policy file's rules, not from the router's class arrays: the
        group's geofence (the first rule naming its country) and the on-net limits of the
        nodes (their ASNs as nodes.yaml gives them), its first matching rule, and
        that rule's pool or the first fallback with an available node inside the fence.
        Only the pools' node sets (selectors expanded) come from the compiled policy.
        """
        model = self.model
        compiled = model.policies[policy]
        spec = compiled.policy
        country = model.countries[int(compiled.group_country[group])]
        node_country = np.array([model.countries[c] for c in model.node_country])
        fence = np.ones(len(model.node_ids), dtype=np.bool_)
        for rule in spec.geofence:
            if country in rule.clients:
                fence = np.isin(node_country, rule.nodes)
                break
        # On-net-only nodes (nodes.yaml serves) answer only the ASNs they serve.
        asn = int(model.client_map.groups.asn[group])
        fence &= np.array([served is None or asn in served for served in model.node_onnet_asns])
        if not spec.pools:
            return compiled.in_pool & fence
        routing = compiled.routing
        assert routing is not None
        rule = next(r for r in spec.rules if r.matches(country, asn))
        chain, name = [], rule.pool
        while name is not None and name not in chain:
            chain.append(name)
            name = spec.pools[name].fallback
        members = [routing.pool_nodes[routing.pool_names.index(n)] & fence for n in chain]
        members = [m for m in members if m.any()]
        return next((m for m in members if (m & available).any()), members[0])

    def best(self, policy: int, group: int, available: np.ndarray) -> np.ndarray:
        """bool[N]: the best available nodes (all False when none is available)."""
        s = np.where(
            available & self.allowed(policy, group, available), self.score[(policy, group)], np.inf
        )
        low = s.min()
        if not np.isfinite(low):
            return np.zeros(len(s), dtype=np.bool_)
        tied = s <= low + SCORE_TIE_MS
        d = self.distance[(policy, group)]
        return tied & (d <= d[tied].min() + SAME_METRO_KM)


def _groups(model: SteeringModel, family: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    out = np.zeros(len(family), dtype=np.int64)
    v4 = family == 4
    if v4.any():
        out[v4] = model.client_map.lookup_v4(lo[v4].astype(np.int64))[0]
    v6 = family == 6
    if v6.any():
        out[v6] = model.client_map.lookup_v6(hi[v6], lo[v6])[0]
    return out


def default_bound_ms(command: str, heartbeat_interval_s: float, missed: int) -> float:
    verb = command.split()[0]
    if verb == "silence":
        return missed * heartbeat_interval_s * 1000.0 + SILENT_MARGIN_MS
    return EXPLICIT_BOUND_MS


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _share(hit: np.ndarray, rows: np.ndarray) -> float | None:
    """The share of ``rows`` that ``hit``; None when there are none."""
    return float(hit[rows].mean()) if rows.any() else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return (
        None
        if value is None or (isinstance(value, float) and math.isnan(value))
        else round(value, digits)
    )


def analyze(
    scenario: Scenario, play: Play, model: SteeringModel, catalogue: Catalogue,
    heartbeat_interval_s: float, missed_heartbeats: int, high_water: float,
) -> dict:  # fmt: skip
    rec = play.records
    n_nodes = len(model.node_ids)
    capacity = np.asarray(model.node_capacity_gbps, dtype=np.float64)
    elapsed = play.elapsed_s
    questions = catalogue.questions
    q_kind = np.array([q.kind for q in questions], dtype=np.int8)
    q_policy = np.array([q.policy for q in questions], dtype=np.int64)
    q_type = np.array([q.qtype for q in questions], dtype=np.int64)

    wire = ~rec.cached
    answered = wire & (rec.rcode >= 0)
    timeouts = wire & (rec.rcode == RCODE_TIMEOUT)
    latency_ms = (rec.t_done - rec.t) * 1000.0
    wire_latency = latency_ms[answered]

    # The truth over time: epochs between the timeline's events.
    event_t = np.array([e.t for e in play.events], dtype=np.float64)
    avail = [play.node_available_at_start] + [e.available for e in play.events]
    external = [play.external_gbps_at_start] + [e.external_gbps for e in play.events]
    avail_arr = np.array(avail, dtype=np.bool_)  # [E + 1, N]
    epoch = np.searchsorted(
        event_t, np.nan_to_num(rec.t_done, nan=elapsed), side="right"
    )  # 0 = before any

    # Which event took each node out, as of each epoch (-1: available or never failed).
    failed_by = np.full((len(avail), n_nodes), -1, dtype=np.int64)
    for k in range(1, len(avail)):
        failed_by[k] = failed_by[k - 1]
        newly = avail[k - 1] & ~avail[k]
        failed_by[k][newly] = k - 1
        failed_by[k][avail[k]] = -1

    # Steering quality, for steered A/AAAA answers that name nodes.
    steered = (q_kind[rec.question] == KIND_STEERED) & (rec.rcode == 0) & (rec.node1 >= 0)
    client_group = _groups(model, rec.family, rec.client_hi, rec.client_lo)
    router_group = np.where(rec.ecs, client_group, UNKNOWN_GROUP)
    policy = q_policy[rec.question]
    pairs = set(zip(policy[steered].tolist(), router_group[steered].tolist()))
    pairs |= set(zip(policy[steered].tolist(), client_group[steered].tolist()))
    oracle = Oracle.build(model, pairs)
    idx = np.flatnonzero(steered)
    n1, n2 = rec.node1[idx].astype(np.int64), rec.node2[idx].astype(np.int64)

    def best_nodes(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """bool[U, N] best nodes and float[U, N] latency per distinct (policy, group, epoch),
        and each row's index into them."""
        keys = np.stack([policy[idx], groups[idx], epoch[idx]], axis=1)
        uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        # dtype given: with no steered answer at all the lists are empty (and would be float).
        best = np.array(
            [oracle.best(int(p), int(g), avail_arr[int(k)]) for p, g, k in uniq], dtype=bool
        ).reshape(len(uniq), n_nodes)
        lat = np.array(
            [oracle.latency[(int(p), int(g))] for p, g, _ in uniq], dtype=np.float64
        ).reshape(len(uniq), n_nodes)
        return best, lat, inverse.ravel()

    # "best": the first answer is a best node (where a client goes while it is up); "in
    # answer": the first or the second is (a best node is at least offered).
    second = np.maximum(n2, 0)
    best, _, u = best_nodes(router_group)
    first_router = best[u, n1]
    in_answer_router = first_router | ((n2 >= 0) & best[u, second])
    best, lat, u = best_nodes(client_group)
    first_client = best[u, n1]
    in_answer_client = first_client | ((n2 >= 0) & best[u, second])
    best_latency = np.where(best, lat, np.inf).min(axis=1)[u]
    excess = np.where(np.isfinite(best_latency), lat[u, n1] - best_latency, np.nan)
    wire_steered = ~rec.cached[idx]
    wire_ecs = wire_steered & rec.ecs[idx]
    every_steered = np.ones(len(idx), dtype=np.bool_)  # the client figures count cached answers too
    best_share = _share(first_router, wire_steered)
    best_in_answer_share = _share(in_answer_router, wire_steered)
    best_share_ecs = _share(first_router, wire_ecs)
    best_in_answer_share_ecs = _share(in_answer_router, wire_ecs)
    client_best_share = _share(first_client, every_steered)
    client_best_in_answer_share = _share(in_answer_client, every_steered)
    finite_excess = excess[np.isfinite(excess)]

    # Answers naming a node that was down at that moment: the event that took it out.
    dead_event = np.full(rec.n, -1, dtype=np.int64)
    for node in (rec.node1.astype(np.int64), rec.node2.astype(np.int64)):
        has = node >= 0
        ev = np.full(rec.n, -1, dtype=np.int64)
        ev[has] = failed_by[epoch[has], node[has]]
        dead_event = np.where((dead_event < 0) & (ev >= 0), ev, dead_event)
    counted = rec.rcode >= 0

    failures, recoveries = [], []
    for e, event in enumerate(play.events):
        before = avail[e]
        after = avail[e + 1]
        failed = np.flatnonzero(before & ~after)
        restored = np.flatnonzero(~before & after)
        spec = scenario.failures[event.failure]
        if len(failed):
            bound = (
                spec.bound_ms
                if spec.bound_ms is not None
                else default_bound_ms(event.command, heartbeat_interval_s, missed_heartbeats)
            )
            # The window ends when the truth changes again for these nodes, or at the end.
            later = [f for f in range(e + 1, len(play.events)) if avail[f + 1][failed].any()]
            window_end = play.events[later[0]].t if later else elapsed
            client_dead = counted & (dead_event == e)  # answers from resolver caches too
            t_rel = (rec.t_done - event.t) * 1000.0
            wire_dead = client_dead & wire
            last = float(t_rel[wire_dead].max()) if wire_dead.any() else 0.0
            reached_zero = not wire_dead.any() or (event.t + last / 1000.0) < window_end - 0.2
            bins = np.arange(
                -1000,
                min((window_end - event.t) * 1000.0, max(5000.0, 3 * bound)) + DEAD_BIN_MS,
                DEAD_BIN_MS,
            )
            near = counted & wire & (t_rel >= bins[0]) & (t_rel < bins[-1])
            hist_all = np.histogram(t_rel[near], bins=bins)[0]
            hist_dead = np.histogram(t_rel[wire_dead], bins=bins)[0]
            named = answered & ((rec.t_done >= event.t - 1.0) & (rec.t_done < event.t))
            named &= np.isin(rec.node1, failed) | np.isin(rec.node2, failed)
            failures.append({
                "label": spec.label or event.command,
                "command": event.command,
                "failure": event.failure,
                "repeat": event.repeat,
                "at_ms": round(event.t * 1000.0, 1),
                "nodes": [model.node_ids[i] for i in failed],
                "bound_ms": bound,
                "window_ms": round((window_end - event.t) * 1000.0, 1),
                "answers_naming_them_before": int(named.sum()),  # in the second before: 0 makes the rest vacuous
                "answers_to_dead": int(wire_dead.sum()),
                "answers_to_dead_after_bound": int((wire_dead & (t_rel > bound)).sum()),
                "time_to_zero_dead_answers_ms": round(last, 1) if reached_zero else None,
                "clients_sent_to_dead": int(client_dead.sum()),
                "clients_sent_to_dead_after_bound": int((client_dead & (t_rel > bound)).sum()),
                "clients_time_to_zero_dead_ms": round(float(t_rel[client_dead].max()), 1) if client_dead.any() else 0.0,
                "flaps_seen_by_clients": {model.node_ids[i]: _flaps(rec, wire, i, event.t) for i in failed},
                "series": {"t_ms": bins[:-1].tolist(), "answers": hist_all.tolist(), "answers_to_dead": hist_dead.tolist()},
            })  # fmt: skip
        if len(restored):
            back = {}
            for i in restored:
                seen = answered & (rec.t_done >= event.t) & ((rec.node1 == i) | (rec.node2 == i))
                back[model.node_ids[i]] = (
                    round((float(rec.t_done[seen].min()) - event.t) * 1000.0, 1)
                    if seen.any()
                    else None
                )
            recoveries.append({
                "label": spec.label or event.command, "command": event.command, "failure": event.failure,
                "repeat": event.repeat, "at_ms": round(event.t * 1000.0, 1),
                "nodes": [model.node_ids[i] for i in restored], "time_to_back_in_answers_ms": back,
            })  # fmt: skip

    # Load on each node against its capacity, per second.
    seconds = max(1, int(math.ceil(elapsed - 0.01)))  # the loop ends a hair after the duration
    serving = rec.served.astype(np.int64)  # the first address of the answer that worked
    load_rows = (rec.rcode >= 0) & (serving >= 0)
    sec = np.minimum(np.floor(rec.t_done[load_rows]).astype(np.int64), seconds - 1)
    counts = np.zeros((n_nodes, seconds))
    np.add.at(counts, (serving[load_rows], sec), 1.0)
    ext = np.zeros((n_nodes, seconds))
    for s in range(seconds):
        ext[:, s] = external[int(np.searchsorted(event_t, s + 0.5, side="right"))]
    load_gbps = (
        carried_gbps(counts, scenario.traffic.gbps_per_qps, scenario.traffic.session_s) + ext
    )
    util = load_gbps / capacity[:, None]
    full = min(seconds, int(math.floor(elapsed)))  # the last partial second would read low
    overloaded = float((util[:, :full] > 1.0).sum())

    # Over time, per second.
    t_sec = np.minimum(np.floor(rec.t).astype(np.int64), seconds - 1)
    done_sec = np.minimum(
        np.floor(np.nan_to_num(rec.t_done, nan=elapsed)).astype(np.int64), seconds - 1
    )
    series: dict = {"t_s": list(range(seconds))}
    series["client_queries"] = np.bincount(t_sec, minlength=seconds).tolist()
    series["sent"] = np.bincount(t_sec[wire], minlength=seconds).tolist()
    series["answered"] = np.bincount(done_sec[answered], minlength=seconds).tolist()
    series["timeouts"] = np.bincount(t_sec[timeouts], minlength=seconds).tolist()
    series["rcodes"] = {}
    for code in sorted(set(rec.rcode[wire].tolist())):
        series["rcodes"][RCODE_NAMES.get(code, f"rcode{code}")] = np.bincount(
            done_sec[wire & (rec.rcode == code)], minlength=seconds
        ).tolist()
    p50, p99 = [], []
    for s in range(seconds):
        lat = latency_ms[answered & (done_sec == s)]
        p50.append(_round(_pct(lat, 50)))
        p99.append(_round(_pct(lat, 99)))
    series["latency_ms_p50"], series["latency_ms_p99"] = p50, p99
    dead_rows = counted & wire & (dead_event >= 0)
    series["answers_to_dead"] = np.bincount(done_sec[dead_rows], minlength=seconds).tolist()
    steered_sec = done_sec[idx][wire_steered]
    tot = np.bincount(steered_sec, minlength=seconds)
    for key, hit in (("best_node_share", first_router),
                     ("best_node_in_answer_share", in_answer_router)):  # fmt: skip
        hits = np.bincount(
            steered_sec, weights=hit[wire_steered].astype(np.float64), minlength=seconds
        )
        series[key] = [_round(h / t) if t else None for h, t in zip(hits.tolist(), tot.tolist())]

    # Where clients went: per client group (by the client's own subnet), the node most sent to.
    client_rows = load_rows & (q_kind[rec.question] == KIND_STEERED)
    groups_seen = client_group[client_rows]
    nodes_seen = serving[client_rows]
    client_map = []
    if len(groups_seen):
        pair = groups_seen * (n_nodes + 1) + nodes_seen
        uniq, cnt = np.unique(pair, return_counts=True)
        per_group: dict[int, tuple[int, int, int]] = {}
        for value, c in zip(uniq.tolist(), cnt.tolist()):
            g, node = divmod(value, n_nodes + 1)
            total, top, top_count = per_group.get(g, (0, -1, 0))
            per_group[g] = (total + c, node if c > top_count else top, max(c, top_count))
        gr = model.client_map.groups
        for g, (total, node, _) in sorted(per_group.items(), key=lambda kv: -kv[1][0])[:400]:
            lat, lon = float(gr.lat[g]), float(gr.lon[g])
            if math.isnan(lat) or math.isnan(lon):
                continue
            client_map.append(
                {
                    "group": g,
                    "lat": lat,
                    "lon": lon,
                    "asn": int(gr.asn[g]),
                    "node": model.node_ids[node],
                    "queries": total,
                }
            )

    quantiles = np.linspace(0, 100, 201)
    rcodes = {
        RCODE_NAMES.get(c, f"rcode{c}"): int(v)
        for c, v in zip(*np.unique(rec.rcode[wire], return_counts=True))
    }
    sent = int(wire.sum())
    result = {
        "qps": round(int(answered.sum()) / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms_p50": _round(_pct(wire_latency, 50)),
        "latency_ms_p90": _round(_pct(wire_latency, 90)),
        "latency_ms_p99": _round(_pct(wire_latency, 99)),
        "latency_ms_max": _round(float(wire_latency.max()) if len(wire_latency) else None),
        "best_node_share": _round(best_share, 4),
        "best_node_in_answer_share": _round(best_in_answer_share, 4),
        "overloaded_node_seconds": overloaded,
        "client_queries": int(rec.n),
        "offered_client_qps": round(rec.n / elapsed, 1) if elapsed > 0 else 0.0,
        "wire_queries": sent,
        "answered": int(answered.sum()),
        "timeouts": int(timeouts.sum()),
        "timeout_share": _round(float(timeouts.sum()) / sent, 5) if sent else None,
        "unanswered_at_end": int((wire & (rec.rcode == RCODE_UNANSWERED)).sum()),
        "truncated": int(rec.truncated[wire].sum()),
        "cache_hit_share": _round(float(rec.cached.mean()), 4) if rec.n else None,
        "ecs_share": _round(float(rec.ecs[wire].mean()), 4) if sent else None,
        "rcodes": rcodes,
        "client_best_node_share": _round(client_best_share, 4),
        "client_best_node_in_answer_share": _round(client_best_in_answer_share, 4),
        "best_node_share_ecs": _round(best_share_ecs, 4),
        "best_node_in_answer_share_ecs": _round(best_in_answer_share_ecs, 4),
        "latency_excess_ms_mean": _round(
            float(finite_excess.mean()) if len(finite_excess) else None
        ),
        "latency_excess_ms_p95": _round(_pct(finite_excess, 95)),
        "max_node_utilization": _round(float(util[:, :full].max()) if full else None, 4),
        "node_seconds_above_high_water": float((util[:, :full] > high_water).sum()),
        "answers_to_dead": int(dead_rows.sum()),
        "failures": failures,
        "recoveries": recoveries,
        "generator": {
            "sent": play.sent,
            "received": play.received,
            "unmatched_replies": play.unmatched,
            "send_errors": play.send_errors,
            "backlog_dropped": play.backlog_dropped,
            "stopped_by": play.stopped_by,
        },  # fmt: skip
        "series": series,
        "latency_cdf": {
            "share": (quantiles / 100).tolist(),
            "ms": [
                _round(v)
                for v in (
                    np.percentile(wire_latency, quantiles).tolist() if len(wire_latency) else []
                )
            ],
        },
        "node_load": {
            "nodes": list(model.node_ids),
            "capacity_gbps": capacity.tolist(),
            "t_s": list(range(seconds)),
            "utilization": np.round(util, 4).tolist(),
            "high_water": high_water,
        },  # fmt: skip
        "client_map": client_map,
        "node_locations": [
            {
                "node": node,
                "lat": float(model.node_lat[i]),
                "lon": float(model.node_lon[i]),
                "asn": int(model.node_asn[i]),
            }
            for i, node in enumerate(model.node_ids)
        ],
        "question_types": {
            str(t): int(c)
            for t, c in zip(*np.unique(q_type[rec.question[wire]], return_counts=True))
        },
    }
    return result


def _flaps(rec, wire: np.ndarray, node: int, since: float) -> int:  # noqa: ANN001
    """Times the node came back into answers after being absent for RETURN_GAP_S or more."""
    seen = np.sort(
        rec.t_done[
            wire
            & (rec.rcode >= 0)
            & (rec.t_done >= since)
            & ((rec.node1 == node) | (rec.node2 == node))
        ]
    )
    if len(seen) < 2:
        return 0
    return int((np.diff(seen) >= RETURN_GAP_S).sum())


def check(expect, result: dict) -> list[dict]:  # noqa: ANN001
    """The scenario's ``expect`` block against the result: one entry per stated check."""
    checks = []

    def add(name: str, expected, actual, ok: bool) -> None:  # noqa: ANN001
        checks.append({"check": name, "expected": expected, "actual": actual, "ok": bool(ok)})

    if expect.max_answers_to_dead_after_bound is not None:
        worst = max((f["answers_to_dead_after_bound"] for f in result["failures"]), default=0)
        add("answers_to_dead_after_bound", f"<= {expect.max_answers_to_dead_after_bound}", worst,
            worst <= expect.max_answers_to_dead_after_bound and bool(result["failures"]))  # fmt: skip
        # Withdrawing a node no answer named proves nothing: the first failure must hit one in use.
        first = result["failures"][0]["answers_naming_them_before"] if result["failures"] else 0
        add(
            "failed_nodes_were_in_answers",
            "> 0 answers naming them in the second before",
            first,
            first > 0,
        )
    if expect.max_timeout_share is not None:
        share = result["timeout_share"]
        add(
            "timeout_share",
            f"<= {expect.max_timeout_share}",
            share,
            share is not None and share <= expect.max_timeout_share,
        )
    if expect.min_best_node_share is not None:
        share = result["best_node_share"]
        add(
            "best_node_share",
            f">= {expect.min_best_node_share}",
            share,
            share is not None and share >= expect.min_best_node_share,
        )
    if expect.min_best_node_in_answer_share is not None:
        share = result["best_node_in_answer_share"]
        add(
            "best_node_in_answer_share",
            f">= {expect.min_best_node_in_answer_share}",
            share,
            share is not None and share >= expect.min_best_node_in_answer_share,
        )
    if expect.max_overloaded_node_seconds is not None:
        value = result["overloaded_node_seconds"]
        add(
            "overloaded_node_seconds",
            f"<= {expect.max_overloaded_node_seconds}",
            value,
            value <= expect.max_overloaded_node_seconds,
        )
    if expect.max_flaps_seen_by_clients is not None:
        worst = max(
            (v for f in result["failures"] for v in f["flaps_seen_by_clients"].values()), default=0
        )
        add(
            "flaps_seen_by_clients",
            f"<= {expect.max_flaps_seen_by_clients}",
            worst,
            worst <= expect.max_flaps_seen_by_clients,
        )
    if expect.max_time_to_back_in_answers_ms is not None:
        times = [v for r in result["recoveries"] for v in r["time_to_back_in_answers_ms"].values()]
        worst = None if not times or any(v is None for v in times) else max(times)
        add("time_to_back_in_answers_ms", f"<= {expect.max_time_to_back_in_answers_ms}", worst,
            worst is not None and worst <= expect.max_time_to_back_in_answers_ms)  # fmt: skip
    if expect.min_qps_share is not None:
        offered = result["generator"]["sent"]
        share = result["answered"] / offered if offered else 0.0
        add(
            "answered_share",
            f">= {expect.min_qps_share}",
            round(share, 4),
            share >= expect.min_qps_share,
        )
    return checks
