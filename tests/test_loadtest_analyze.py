"""loadtest/analyze.py in process: what the best-node figures count, on a few made-up answers.

A Telefonica client (ECS 83.44.10.0/24) has two best nodes in the sample, tef-mad-1 and
tef-mad-2 (same score, 4 km apart); ora-es-mad-1 and pop-par-1 score worse. Three answers: the
best node first, the best node second, no best node. ``best_node_share`` counts the first only,
``best_node_in_answer_share`` the first two.
"""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from loadtest.analyze import analyze
from loadtest.play import Play, Records
from loadtest.population import KIND_STEERED, build_catalogue
from loadtest.scenario import SCENARIO_DIR, load_scenario
from router.config import load_deployment
from router.steering import compile_model
from tests.conftest import REPO

ANSWERS = (  # (first, second) address of each answer, as node names
    ("tef-mad-1", "ora-es-mad-1"),  # the best node first
    ("ora-es-mad-1", "tef-mad-2"),  # a best node, but second
    ("ora-es-mad-1", "pop-par-1"),  # none
)


@pytest.fixture(scope="module")
def result() -> dict:
    deployment = load_deployment(REPO / "zones")
    model = compile_model(deployment)
    scenario = load_scenario(SCENARIO_DIR / "steady.yaml")
    catalogue = build_catalogue(deployment, model, scenario.names, 1)
    question = next(
        i
        for i, q in enumerate(catalogue.questions)
        if q.kind == KIND_STEERED and q.name == "video.cdn.example." and q.qtype == 1
    )
    records = Records.allocate(len(ANSWERS))
    records.n = len(ANSWERS)
    for row, (first, second) in enumerate(ANSWERS):
        records.t[row] = 0.1 * row
        records.t_done[row] = 0.1 * row + 0.001
        records.question[row] = question
        records.family[row] = 4
        records.client_lo[row] = int(ipaddress.ip_address("83.44.10.0"))
        records.ecs[row] = True
        records.rcode[row] = 0
        records.node1[row] = model.node_ids.index(first)
        records.node2[row] = model.node_ids.index(second)
        records.served[row] = records.node1[row]
    n = len(model.node_ids)
    play = Play(records, [], np.ones(n, dtype=bool), np.zeros(n), 0.0, 1.0)
    return analyze(scenario, play, model, catalogue, 1.0, 3, 0.9)


def test_best_node_share_counts_the_first_answer_only(result: dict) -> None:
    for key in ("best_node_share", "best_node_share_ecs", "client_best_node_share"):
        assert result[key] == pytest.approx(1 / 3, abs=1e-4), key
    assert result["series"]["best_node_share"][0] == pytest.approx(1 / 3, abs=1e-3)


def test_best_node_in_answer_share_counts_the_first_two(result: dict) -> None:
    for key in (
        "best_node_in_answer_share",
        "best_node_in_answer_share_ecs",
        "client_best_node_in_answer_share",
    ):
        assert result[key] == pytest.approx(2 / 3, abs=1e-4), key
    assert result["series"]["best_node_in_answer_share"][0] == pytest.approx(2 / 3, abs=1e-3)
