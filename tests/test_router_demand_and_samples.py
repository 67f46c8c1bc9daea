"""Demand observed from query counts, and RTT samples fused per (group, node)."""

from __future__ import annotations

import ipaddress
import math
import os
import shutil
import socket
import time

import dns.edns
import dns.message
import numpy as np
import pytest
import yaml

from router.config import load_deployment
from router.config.latency import load_rtt_samples
from router.explain import explain
from router.service.config_files import ConfigFiles
from router.service.demand import DemandCounters, DemandModel, moved_share
from router.service.supervisor import Supervisor
from router.steering import compile_model
from router.steering.samples import RttSamples


def test_rtt_samples_fuse_as_an_ewma_and_age_out() -> None:
    samples = RttSamples(groups=4, alpha=0.5, max_age_s=10)
    assert samples.add(2, 7, 20.0, now=0.0)
    assert samples.add(2, 7, 10.0, now=1.0)
    assert samples.get(2, 7, now=1.0) == 15.0  # half way to the new sample
    assert samples.add(1, 3, 4.0, now=5.0)
    start, node, rtt = samples.csr(now=5.0)
    assert (
        start.tolist() == [0, 0, 1, 2, 2]
        and node.tolist() == [3, 7]
        and rtt.tolist() == [4.0, 15.0]
    )
    assert samples.get(2, 7, now=12.0) is None  # not refreshed for longer than max_age_s
    start, node, _ = samples.csr(now=12.0)
    assert start.tolist() == [0, 0, 1, 1, 1] and node.tolist() == [3]
    # A sample after the average aged out starts afresh instead of blending with it.
    assert samples.add(1, 3, 40.0, now=30.0) and samples.get(1, 3, now=30.0) == 40.0


@pytest.mark.parametrize(
    ("group", "ms"), [(-1, 5.0), (4, 5.0), (0, math.nan), (0, -1.0), (0, math.inf), (0, 1e6)]
)
def test_rtt_samples_reject_what_is_not_an_rtt(group: int, ms: float) -> None:
    samples = RttSamples(groups=4)
    assert not samples.add(group, 0, ms, now=0.0)
    assert len(samples) == 0


def test_demand_counters_are_shared_with_forked_workers() -> None:
    counters = DemandCounters(workers=2, policies=1, groups=3)
    pid = os.fork()
    if pid == 0:  # the worker's side: count and leave
        counters.for_worker(1)[0, 2] += 5
        os._exit(0)
    os.waitpid(pid, 0)
    counters.for_worker(0)[0, 2] += 1
    assert counters.total().tolist() == [[0, 0, 6]]


def test_demand_model_smooths_rates_and_splits_reported_load() -> None:
    model = DemandModel(policies=2, groups=3, half_life_s=10)
    counts = np.zeros((2, 3))
    model.observe(counts, now=0.0)
    assert model.demand_gbps(np.array([100.0, 50.0]), reported_gbps=0.0) is None  # nothing seen yet
    counts = np.array([[300.0, 100.0, 0.0], [0.0, 0.0, 400.0]])  # 10 s: 30, 10, 0 and 40 q/s
    model.observe(counts, now=10.0)
    np.testing.assert_allclose(model.qps, 0.5 * counts / 10)  # one half-life: half way
    # Before any load is reported: the policies' expected peaks, spread by query share.
    np.testing.assert_allclose(
        model.demand_gbps(np.array([100.0, 50.0]), 0.0), [[75.0, 25.0, 0.0], [0, 0, 50.0]]
    )
    # With reported load: the total is what nodes carry, split by the policies' query shares.
    np.testing.assert_allclose(
        model.demand_gbps(np.array([100.0, 50.0]), 80.0), [[30.0, 10.0, 0.0], [0, 0, 40.0]]
    )
    # A worker restarted (its counters reset): no negative rates.
    model.observe(np.zeros((2, 3)), now=20.0)
    assert (model.qps >= 0).all() and model.qps.sum() < 0.5 * counts.sum() / 10


def test_moved_share() -> None:
    assert moved_share(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.0
    assert moved_share(np.array([2.0, 0.0]), np.array([0.0, 2.0])) == 1.0
    assert moved_share(np.array([0.0, 0.0]), np.array([0.0, 0.0])) == 0.0


def test_rtt_sample_file_rows_are_checked_line_by_line(tmp_path) -> None:
    path = tmp_path / "rtt.csv"
    path.write_text(
        "prefix,node,rtt_ms,measured_at\n"
        "2.80.0.0/24,meo-opo-1,0.5,2026-11-22T06:00:00+00:00\n"
        "2.80.0.1/24,meo-opo-1,0.5,1795000000\n"
        "2.80.0.0/24,ghost-1,0.5,1795000000\n"
        "2.80.0.0/24,meo-opo-1,-3,1795000000\n"
        "2.80.0.0/24,meo-opo-1,3,yesterday\n"
        "2.80.0.0/24,meo-opo-1,3,2026-11-22T06:00:00\n"
        "2.80.0.0/24,meo-opo-1\n"
    )
    samples, problems = load_rtt_samples(path, "rtt.csv", {"meo-opo-1"})
    assert [(s.node, s.rtt_ms, s.measured_at) for s in samples] == [
        ("meo-opo-1", 0.5, 1795327200.0)
    ]
    assert [(p.line, p.message.split(":")[0].split(" ")[0]) for p in problems] == [
        (3, "prefix"), (4, "unknown"), (5, "rtt_ms"), (6, "measured_at"), (7, "measured_at"), (8, "expected"),
    ]  # fmt: skip
    assert "has host bits set" in problems[0].message


def test_rtt_sample_file_steers_explain(tmp_path, deployment_dir) -> None:
    shutil.copytree(deployment_dir.parent, tmp_path, dirs_exist_ok=True)
    zones = tmp_path / "zones"
    settings = yaml.safe_load((zones / "deployment.yaml").read_text())
    settings["rtt_samples"] = "rtt-samples.csv"
    (zones / "deployment.yaml").write_text(yaml.safe_dump(settings))
    (zones / "rtt-samples.csv").write_text(
        f"prefix,node,rtt_ms,measured_at\n2.80.0.0/24,meo-opo-1,0.5,{time.time() - 60:.0f}\n"
    )
    result = explain(load_deployment(zones), "video.cdn.example.", "2.80.0.0/24")
    first = next(c for c in result.candidates if c.chosen == 1)
    assert (first.node, first.latency_source, first.latency_ms) == (
        "meo-opo-1",
        "node samples",
        0.5,
    )
    # A measurement older than the samples' max age says nothing any more.
    (zones / "rtt-samples.csv").write_text(
        f"prefix,node,rtt_ms,measured_at\n2.80.0.0/24,meo-opo-1,0.5,{time.time() - 3600:.0f}\n"
    )
    result = explain(load_deployment(zones), "video.cdn.example.", "2.80.0.0/24")
    first = next(c for c in result.candidates if c.chosen == 1)
    assert first.node == "meo-lis-1" and first.latency_source == "measured"


def test_answered_queries_become_the_plans_demand(tmp_path, deployment_dir) -> None:
    """A real worker counts steered queries; the supervisor turns them into Gbps and re-plans."""
    shutil.copytree(deployment_dir.parent, tmp_path, dirs_exist_ok=True)
    zones = tmp_path / "zones"
    policy_file = zones / "cdn.example.policy.yaml"
    policy_file.write_text(policy_file.read_text().replace(
        "    default_site: mad-espanix\n", "    default_site: mad-espanix\n    expected_peak_gbps: 300\n", 1))  # fmt: skip
    deployment = load_deployment(zones)
    model = compile_model(deployment)
    video = next(i for i, p in enumerate(model.policies) if p.name == "video")
    meo_group, _ = model.client_map.lookup(ipaddress.ip_address("2.80.0.1"))
    supervisor = Supervisor(deployment, model, [("127.0.0.1", 0)], workers=1)
    supervisor.start()
    try:
        t0 = time.monotonic()
        assert not supervisor.observe_demand(now=t0 + 11)  # the first reading is the baseline
        query = dns.message.make_query("video.cdn.example.", "A", use_edns=0,
                                       options=[dns.edns.ECSOption("2.80.0.0", 24)])  # fmt: skip
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            for _ in range(200):
                s.sendto(query.to_wire(), ("127.0.0.1", supervisor.port))
                s.recv(4096)
        generation = supervisor.table.generation
        assert supervisor.observe_demand(now=t0 + 22)  # all of it from MEO's group: re-plan
        deadline = time.monotonic() + 10
        while supervisor.table.generation == generation and time.monotonic() < deadline:
            time.sleep(0.02)
        demand = supervisor.planner.demand[video]
        assert abs(demand[meo_group] - 300.0) < 1e-6 and abs(demand.sum() - 300.0) < 1e-6
        meo_nodes = [i for i, n in enumerate(model.node_ids) if n.startswith("meo-")]
        assert supervisor.table.generation > generation
        planned = supervisor.table.node_planned
        # MEO's own nodes fill to their headroom (0.8 x 300 Gbps); the rest spills elsewhere.
        assert abs(planned[meo_nodes].sum() - 240.0) < 1e-6 and abs(planned.sum() - 300.0) < 1e-6
        assert (planned <= model.node_capacity_gbps * 0.8 + 1e-6).all()
    finally:
        supervisor.stop()


def test_rtt_averages_carry_over_by_node_id_and_the_fresher_wins() -> None:
    old = RttSamples(4)
    old.add(1, 0, 10.0, now=100.0)  # node 0 is "a"
    old.add(2, 1, 20.0, now=100.0)  # node 1 is "b": gone from the new config
    old.add(3, 0, 30.0, now=100.0)
    new = RttSamples(4)
    new.add(3, 1, 99.0, now=200.0)  # "a" is node 1 here, seeded fresher from the file
    assert new.carry_from(old, {0: 1}) == 1
    assert new.get(1, 1, now=150.0) == 10.0 and new.get(3, 1, now=250.0) == 99.0
    assert new.get(2, 0, now=150.0) is None and new.changed_groups == {1, 3}


def test_a_reload_keeps_the_rtt_averages_fused_from_heartbeats(tmp_path, deployment_dir) -> None:
    shutil.copytree(deployment_dir.parent, tmp_path, dirs_exist_ok=True)
    zones = tmp_path / "zones"
    deployment = load_deployment(zones)
    model = compile_model(deployment)
    supervisor = Supervisor(
        deployment, model, [("127.0.0.1", 0)], workers=1, files=ConfigFiles.read(zones)
    )
    supervisor.start()
    try:
        group, _ = model.client_map.lookup(ipaddress.ip_address("2.80.0.1"))
        with supervisor.health_lock:  # as a heartbeat carrying one RTT sample would
            supervisor.intake.fuse_rtt("tef-mad-1", (("2.80.0.0/24", 1.5),), time.monotonic())
        old = supervisor.config
        with open(zones / "cdn.example.zone", "a", encoding="utf-8") as zone:
            zone.write('reloaded 60 IN TXT "v2"\n')
        assert supervisor.reload("test")["result"] == "ok"
        config = supervisor.config
        assert config is not old
        tef = config.node_index["tef-mad-1"]
        assert config.rtt.get(group, tef, time.monotonic()) == 1.5
        start, nodes, rtt = config.planner.samples
        assert list(
            zip(nodes[start[group] : start[group + 1]], rtt[start[group] : start[group + 1]])
        ) == [(tef, 1.5)]
    finally:
        supervisor.stop()


def test_held_rtt_samples_fuse_per_epoch_in_the_same_order_whatever_the_arrival(
    tmp_path, deployment_dir
) -> None:
    """With a bus, RTT samples wait for the epoch after their heartbeat's stamp, and are fused
    by node, stamp and sequence: two routers that got the same heartbeats in another order, or
    a moment apart, fuse the same averages at the same epoch."""
    shutil.copytree(deployment_dir.parent, tmp_path, dirs_exist_ok=True)
    zones = tmp_path / "zones"
    deployment = load_deployment(zones)
    model = compile_model(deployment)
    group, _ = model.client_map.lookup(ipaddress.ip_address("2.80.0.1"))
    averages = []
    for arrival in ((1, 2, 3), (3, 1, 2)):  # two routers, the copies in another order
        supervisor = Supervisor(deployment, model, [("127.0.0.1", 0)], workers=1,
                                files=ConfigFiles.read(zones))  # fmt: skip
        supervisor.start()
        try:
            intake = supervisor.intake
            beats = {1: (100.2, 7, 10.0), 2: (100.7, 8, 20.0), 3: (101.3, 9, 40.0)}
            for k in arrival:
                ts, seq, ms = beats[k]
                intake.held_rtt.append((ts, "tef-mad-1", seq, (("2.80.0.0/24", ms),)))
            tef = supervisor.config.node_index["tef-mad-1"]
            assert intake.fuse_held_rtt(100.0, now=50.0) is False  # nothing stamped before 100
            assert intake.fuse_held_rtt(101.0, now=50.0) is True  # the two stamped in 100-101
            after_101 = supervisor.config.rtt.get(group, tef, 50.0)
            assert [h[2] for h in intake.held_rtt] == [9]  # the one of 101.3 waits
            intake.fuse_held_rtt(102.0, now=50.0)
            assert intake.held_rtt == []
            averages.append((after_101, supervisor.config.rtt.get(group, tef, 50.0)))
        finally:
            supervisor.stop()
    assert averages[0] == averages[1]
    assert averages[0][0] == pytest.approx(10.0 + 0.3 * (20.0 - 10.0))  # 10 first, then 20
