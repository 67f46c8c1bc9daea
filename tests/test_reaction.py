"""loadtest/reaction.py on the sample: node down -> the first DNS answer without it, timed at
the DNS socket against the real router, a few events, each node restored before the next."""

from __future__ import annotations

from pathlib import Path

from loadtest.reaction import CONTRACT_KEYS, measure_node_down_to_answer

REPO = Path(__file__).resolve().parents[1]


def test_node_down_to_answer_on_the_sample(tmp_path: Path) -> None:
    figures = measure_node_down_to_answer(
        REPO / "zones", 3, root=tmp_path, progress=False, restore=True
    )
    for key in CONTRACT_KEYS + ("node_down_to_answer_ms_p90", "node_down_to_answer_ms_max"):
        assert isinstance(figures[key], float) and figures[key] > 0, (key, figures[key])
    assert figures["count"] == figures["events"] == 3
    assert figures["timeouts"] == 0 and figures["restored"] == 3
    # The intake is held while a failure's table is made: no heartbeat may be dropped for it.
    assert figures["telemetry_receive_drops"] == 0
    assert (
        figures["node_down_to_answer_ms_p50"]
        <= figures["node_down_to_answer_ms_p99"]
        <= figures["node_down_to_answer_ms_max"]
    )
    events = figures["per_event"]
    assert len({e["node"] for e in events}) == 3  # distinct nodes, so events never overlap
    for event in events:
        # The answer each event ended on: an answer, without the node that went down.
        assert event["final_answer"] and event["node_ip"] not in event["final_answer"], event
        assert event["ms"] > 0 and event["queries"] >= 1 and event["restored"]
    # The router's own timing of the table each event was answered from, from its log.
    assert figures["breakdown"], "no table timing found in the router's log"
    for row in figures["breakdown"]:
        assert row["kind"] in ("incremental", "full", "full (background)", "masked")
        parts = sum(
            row[k]
            for k in ("waited_ms", "inputs_ms", "planned_ms", "signed_ms", "file_ms", "workers_ms")
        )
        # The parts add up to the whole (each is rounded to 0.1 ms in the log).
        assert row["planned_ms"] > 0 and abs(parts - row["router_ms"]) <= 0.5, row
    assert figures["targets"]["node_down_to_answer_ms_p50"]["limit_ms"] == 20.0
