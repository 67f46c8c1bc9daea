"""``router plan``: what a new deployment directory would change, against a directory or a running router."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from router.cli import main
from router.config import load_deployment
from router.steering.build import Planner
from router.steering.model import compile_model
from tests.conftest import make_deployment, start_router

PEAK = 300.0  # Gbps per policy: demand known, so shares are by traffic


# The video policy's node list in the sample, as the file writes it.
VIDEO_NODES = "    nodes: all               # one pool: every node, for every client\n    onnet_bonus_ms: 25       # on-net video saves the ISP transit: prefer it strongly"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample deployment with a demand prior; new directories are made next to it."""
    zones = make_deployment(tmp_path_factory.mktemp("plan"))
    policy = zones / "cdn.example.policy.yaml"
    text = policy.read_text()
    assert text.count("    default_site: mad-espanix\n") == 2
    policy.write_text(
        text.replace(
            "    default_site: mad-espanix\n",
            f"    default_site: mad-espanix\n    expected_peak_gbps: {PEAK}\n",
        )
    )
    return zones.parent


def new_dir(root: Path, name: str, policy_edit: tuple[str, str] | None = None) -> Path:
    """A copy of the current directory, with one text replacement in the policy file."""
    target = root / name
    shutil.copytree(root / "zones", target)
    if policy_edit is not None:
        path = target / "cdn.example.policy.yaml"
        text = path.read_text()
        assert text.count(policy_edit[0]) == 1
        path.write_text(text.replace(policy_edit[0], policy_edit[1]))
    return target


def plan(
    capsys: pytest.CaptureFixture[str], new: Path, against: str, *extra: str
) -> tuple[int, str, str]:
    code = main(["plan", "--zones", str(new), "--against", against, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def plan_json(capsys: pytest.CaptureFixture[str], new: Path, against: str) -> tuple[int, dict]:
    code, out, err = plan(capsys, new, against, "--json")
    assert code in (0, 2), err
    return code, json.loads(out)


def by_name(report: dict, name: str) -> dict:
    return next(n for n in report["names"] if n["name"] == name)


def test_unchanged_copy_plans_no_changes(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = new_dir(root, "same")
    code, out, _ = plan(capsys, new, str(root / "zones"))
    assert code == 0
    assert "demand: configured prior (expected_peak_gbps), not observed" in out
    assert "total: 0.0% of steered traffic moves (0.0 of 600.0 Gbps)" in out
    assert out.rstrip().endswith("no changes; 0 node(s) planned past capacity")
    code, report = plan_json(capsys, new, str(root / "zones"))
    assert code == 0 and report["changes"] is False and report["moved"] == 0
    assert [n["groups_changed"] for n in report["names"]] == [0, 0]


def _lead(table, policy: int, group: int) -> dict[int, float]:  # noqa: ANN001
    out: dict[int, float] = {}
    for nodes, share in table.entries(policy, group):
        out[nodes[0]] = out.get(nodes[0], 0.0) + share
    return out


def test_node_removed_from_pool_moves_its_traffic(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = load_deployment(root / "zones")
    ids = [n.id for n in old.inventory.nodes]
    pool = ", ".join(i for i in ids if i != "tef-mad-1")
    new = new_dir(root, "pool", (VIDEO_NODES, f"    nodes: [{pool}]\n    onnet_bonus_ms: 25"))
    code, report = plan_json(capsys, new, str(root / "zones"))
    assert code == 2 and report["changes"] and report["basis"] == "gbps"
    video = by_name(report, "video.cdn.example.")
    assert video["pool_removed"] == ["tef-mad-1"] and video["pool_added"] == []
    assert (
        video["groups_changed"] > 0 and video["moved"] > 0 and video["total"] == pytest.approx(PEAK)
    )

    # Hand check from the routing tables themselves (same client map: same group indexes).
    tables = []
    for directory in (root / "zones", new):
        model = compile_model(load_deployment(directory))
        tables.append(
            (model, Planner(model).build(np.zeros(len(model.node_ids), dtype=np.int8), None, 1))
        )
    (model_b, before), (model_a, after) = tables
    p = next(i for i, c in enumerate(model_b.policies) if c.name == "video")
    demand = model_b.policies[p].demand_prior
    moved = changed = 0
    tef = model_b.node_ids.index("tef-mad-1")
    on_tef = 0.0
    for g in range(len(model_b.client_map.groups)):
        lb = {model_b.node_ids[n]: s for n, s in _lead(before, p, g).items()}
        la = {model_a.node_ids[n]: s for n, s in _lead(after, p, g).items()}
        moved += demand[g] * (1 - sum(min(s, la.get(n, 0.0)) for n, s in lb.items()))
        on_tef += demand[g] * _lead(before, p, g).get(tef, 0.0)
        entries_b = [
            ([model_b.node_ids[n] for n in ns], round(s, 3)) for ns, s in before.entries(p, g)
        ]
        entries_a = [
            ([model_a.node_ids[n] for n in ns], round(s, 3)) for ns, s in after.entries(p, g)
        ]
        changed += entries_b != entries_a
        assert all(
            "tef-mad-1" not in [model_a.node_ids[n] for n in ns] for ns, _ in after.entries(p, g)
        )
    assert video["moved"] == pytest.approx(moved, rel=1e-6)
    assert video["groups_changed"] == changed
    # Everything tef-mad-1 led for video must move (it left the pool), and it carried some.
    assert on_tef > 1 and video["moved"] >= on_tef - 1e-6
    assert report["moved"] == pytest.approx(sum(n["moved"] for n in report["names"]))
    tef_row = next(n for n in report["nodes"] if n["node"] == "tef-mad-1")
    assert tef_row["planned_before_gbps"] == pytest.approx(float(before.node_planned[tef]))
    assert tef_row["planned_after_gbps"] == pytest.approx(
        float(after.node_planned[model_a.node_ids.index("tef-mad-1")])
    )

    code, out, _ = plan(capsys, new, str(root / "zones"))
    assert code == 2
    assert "~ video.cdn.example. (policy cdn.example./video)" in out
    assert 'nodes: "all" -> 17 (-tef-mad-1)' in out
    assert f"{video['groups_changed']} of {video['groups']} client groups change answers" in out
    assert (
        "AS3352 ES Madrid (TELEFONICA DE ESPANA S.A.U.): tef-mad-1," in out
    )  # the biggest mover, by its key's label


def test_small_node_past_capacity_is_flagged(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = new_dir(root, "small", (VIDEO_NODES, "    nodes: [ora-es-bio-1]\n    onnet_bonus_ms: 25"))
    # The one node must serve every client (an on-net-only node alone strands the others).
    nodes = new / "nodes.yaml"
    nodes.write_text(
        nodes.read_text().replace(
            "{id: ora-es-bio-1, asn: 12479,", "{id: ora-es-bio-1, asn: 12479, serves: any,"
        )
    )
    code, report = plan_json(capsys, new, str(root / "zones"))
    assert code == 2
    row = next(n for n in report["nodes"] if n["node"] == "ora-es-bio-1")
    assert (
        row["capacity_gbps"] == 50 and row["planned_after_gbps"] > 50 and row["over_capacity_after"]
    )
    assert not row["over_capacity_before"] and row["planned_before_gbps"] < 50
    assert [n["node"] for n in report["nodes"] if n["over_capacity_after"]] == ["ora-es-bio-1"]
    code, out, _ = plan(capsys, new, str(root / "zones"))
    assert "PAST CAPACITY" in next(
        line for line in out.splitlines() if line.strip().startswith("ora-es-bio-1")
    )
    assert "1 node(s) planned past capacity: ora-es-bio-1" in out


def test_geofence_rule_added(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = new_dir(root, "fence", ("    default_site: mad-espanix\n    expected_peak_gbps: 300.0\n    load_penalty_ms: 60",
                                  "    default_site: mad-espanix\n    expected_peak_gbps: 300.0\n"
                                  "    geofence:\n      - {clients: [PT], nodes: [FR]}\n    load_penalty_ms: 60"))  # fmt: skip
    code, report = plan_json(capsys, new, str(root / "zones"))
    assert code == 2
    groups = load_deployment(root / "zones").client_map.groups
    pt = sum(1 for c in groups.country if c == "PT")
    assert pt > 0
    assert report["geofence"] == [{
        "policy": "cdn.example./video", "change": "added", "before": None,
        "after": {"clients": ["PT"], "nodes": ["FR"]}, "names": ["video.cdn.example."], "groups": pt,
        "demand_gbps": pytest.approx(report["geofence"][0]["demand_gbps"]),
        "groups_changing_answers": report["geofence"][0]["groups_changing_answers"],
    }]  # fmt: skip
    assert report["geofence"][0]["demand_gbps"] > 0
    # Every PT group was answered from PT (or ES) nodes and now goes to the one FR node.
    assert report["geofence"][0]["groups_changing_answers"] == pt
    assert by_name(report, "video.cdn.example.")["groups_changed"] >= pt
    assert all(
        g["after"] == "pop-par-1" for g in by_name(report, "video.cdn.example.")["top_groups"]
    )
    code, out, _ = plan(capsys, new, str(root / "zones"))
    assert (
        f"+ geofence cdn.example./video: {{clients: [PT], nodes: [FR]}}: {pt} client groups" in out
    )


def test_static_record_change_is_listed(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = new_dir(root, "records")
    zone = new / "cdn.example.zone"
    zone.write_text(zone.read_text().replace("203.0.113.80", "203.0.113.81"))
    code, report = plan_json(capsys, new, str(root / "zones"))
    assert code == 2 and report["moved"] == 0
    assert [(r["change"], r["rrset"]) for r in report["records"]] == [
        ("changed", "origin.cdn.example. A")
    ]
    _, out, _ = plan(capsys, new, str(root / "zones"))
    assert "~ record origin.cdn.example. A: 203.0.113.80 (ttl" in out


def test_invalid_new_directory_is_refused(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = new_dir(root, "invalid", ("    onnet_bonus_ms: 25", "    onnet_bonus_ms: -5"))
    code, out, err = plan(capsys, new, str(root / "zones"))
    assert code == 1 and out == ""
    line = next(
        i
        for i, text in enumerate((new / "cdn.example.policy.yaml").read_text().splitlines(), 1)
        if "-5" in text
    )
    assert f"{new / 'cdn.example.policy.yaml'}:{line}: " in err
    assert "nothing planned" in err


def test_against_running_router_agrees_with_directory(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = new_dir(root, "api", ("    onnet_bonus_ms: 25", "    onnet_bonus_ms: 0"))
    running = start_router(root / "zones", tmp_path / "router.log", workers=1)
    try:
        from router.plan import fetch_running

        decisions, demand = fetch_running(running.api)  # no token: read-only
        assert demand["source"] == "configured prior"
        assert demand["policies"]["cdn.example./video"]["total_gbps"] == pytest.approx(PEAK)
        assert decisions["names"] == {
            "video.cdn.example.": "cdn.example./video",
            "www.cdn.example.": "cdn.example./web",
        }
        assert decisions["policies"]["cdn.example./video"]["settings"]["onnet_bonus_ms"] == 25
        assert "origin.cdn.example. A" in decisions["zones"]["cdn.example."]
        code_api, via_api = plan_json(capsys, new, running.api)
    finally:
        running.stop()
        assert running.process.stdout is not None
        running.process.stdout.close()
    code_dir, via_dir = plan_json(capsys, new, str(root / "zones"))
    assert code_api == code_dir == 2
    assert by_name(via_api, "video.cdn.example.")["groups_changed"] > 0
    assert via_api.pop("generation_before") >= 1 and via_dir.pop("generation_before") == 0
    for report in (via_api, via_dir):
        report.pop("against")
    assert via_api == via_dir


def test_observed_demand_is_mapped_by_group_key(root: Path) -> None:
    from router.plan import compare, plan_offline

    decisions, demand = plan_offline(load_deployment(root / "zones"))
    keys = [g["key"] for g in decisions["groups"]]
    telefonica = next(
        k for k, g in zip(keys, decisions["groups"]) if g["label"].startswith("AS3352 ES Madrid")
    )
    observed = {"generation": 5, "source": "observed", "policies": {
        "cdn.example./video": {"total_gbps": 120.0, "groups": {telefonica: 100.0, keys[1]: 20.0}},
        "cdn.example./web": {"total_gbps": 0.0, "groups": {}},
    }}  # fmt: skip
    after = plan_offline(load_deployment(root / "zones"), (decisions, observed))
    assert after[1]["source"] == "observed (mapped by client group)"
    assert after[1]["policies"]["cdn.example./video"]["groups"] == {
        telefonica: 100.0,
        keys[1]: 20.0,
    }
    assert after[1]["policies"]["cdn.example./web"]["total_gbps"] == 0.0  # known groups: no prior
    report = compare((decisions, observed), after)
    assert report["total"] == pytest.approx(120.0) and report["basis"] == "gbps"


def test_an_admin_state_file_alone_is_a_change(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The new directory's admin_state file is applied as serve applies it at a reload: a
    node it sets down takes its traffic with it; a file removed lifts what it set."""
    down = new_dir(root, "admin-down")
    (down / "admin_state").write_text("tef-mad-1 => DOWN  # maintenance\n")
    code, report = plan_json(capsys, down, str(root / "zones"))
    assert code == 2 and report["changes"]
    tef = next(n for n in report["nodes"] if n["node"] == "tef-mad-1")
    assert (tef["state_before"], tef["state_after"]) == ("up", "down")
    assert tef["admin_after"] == {"state": "down", "from": "file"}
    assert tef["planned_before_gbps"] > 0 and tef["planned_after_gbps"] == 0
    video = by_name(report, "video.cdn.example.")
    assert video["groups_changed"] > 0 and video["moved"] > 0
    code, out, _ = plan(capsys, down, str(root / "zones"))
    assert "tef-mad-1" in out and "(up -> down, set down by the admin_state file)" in out

    # Against a router serving that directory: the file's override is its own (from: file),
    # so a directory without the file brings the node back; the API's overrides would stay.
    running = start_router(down, tmp_path / "router.log", workers=1)
    try:
        code, report = plan_json(capsys, new_dir(root, "admin-lifted"), running.api)
        code_same, same = plan_json(capsys, down, running.api)
    finally:
        running.stop()
        assert running.process.stdout is not None
        running.process.stdout.close()
    tef = next(n for n in report["nodes"] if n["node"] == "tef-mad-1")
    assert (
        code == 2
        and (tef["state_before"], tef["state_after"]) == ("down", "up")
        and tef["admin_after"] is None
    )
    assert by_name(report, "video.cdn.example.")["moved"] > 0
    assert code_same == 0 and not same["changes"]


def test_with_admin_file_keeps_the_api_and_replaces_the_file() -> None:
    from router.health.state import with_admin_file

    before = {"a": ("down", "file"), "b": ("drain", "api"), "c": ("down", "api")}
    after = with_admin_file(before, {"c": "up", "d": "drain"})
    assert after == {"b": ("drain", "api"), "d": ("drain", "file")}
