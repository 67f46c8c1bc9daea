"""Heartbeat verification and the node state machine, with an injected clock."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router.health.monitor import HealthSettings, NodeMonitor
from router.health.state import NodeHealth, NodeState
from router.health.telemetry import Heartbeat

NOW = 1_800_000_000.0
BOOT = "0" * 32


def beat(
    node: str = "a",
    seq: int = 1,
    ts: float = NOW,
    power: str = "mains",
    uplinks=None,
    load: float = 10.0,
) -> Heartbeat:
    return Heartbeat(
        node,
        BOOT,
        seq,
        ts,
        power,
        uplinks if uplinks is not None else {"u1": "up", "u2": "up"},
        load,
        100.0,
    )


# -- the state machine ------------------------------------------------------------------------

SETTINGS = HealthSettings(heartbeat_interval_s=1.0, missed_heartbeats=3, recover_after=3, hold_down_s=10.0,
                          max_hold_down_s=80.0, high_water=0.9, startup_grace_s=5.0)  # fmt: skip


def monitor() -> NodeMonitor:
    return NodeMonitor(("a", "b"), np.array([100.0, 100.0]), SETTINGS, now=0.0)


TRANSITIONS = [
    # (report fields, expected state, reason fragment)
    ({"power": "off"}, NodeState.DOWN, "power off"),
    ({"power": "battery_low"}, NodeState.DOWN, "power battery_low"),
    ({"uplinks": {"u1": "down", "u2": "down"}}, NodeState.DOWN, "every uplink down"),
    ({"power": "battery"}, NodeState.DRAINING, "on battery"),
    ({"load": 95.0}, NodeState.DRAINING, "load 95% of capacity"),
    ({"uplinks": {"u1": "degraded", "u2": "down"}}, NodeState.DRAINING, "degraded"),
    ({"uplinks": {"u1": "up", "u2": "down"}}, NodeState.UP, "heartbeats good"),
    ({}, NodeState.UP, "heartbeats good"),
]


@pytest.mark.parametrize("fields, state, reason", TRANSITIONS)
def test_one_report_makes_a_node_worse_at_once(fields: dict, state: NodeState, reason: str) -> None:
    m = monitor()
    changed = m.report(beat(**fields), now=1.0)
    assert changed == (state != NodeState.UP)
    assert NodeState(int(m.state[0])) == state and reason in m.reason[0]
    assert m.state[1] == NodeState.UP  # the other node is untouched


def test_recovery_needs_good_reports_and_the_hold_down() -> None:
    m = monitor()
    m.report(beat(seq=1, power="off"), now=1.0)
    # Good reports every second: 3 in a row are not enough before 10 s have passed.
    for t in range(2, 11):
        assert not m.report(beat(seq=t), now=float(t))
        assert m.state[0] == NodeState.DOWN and "held down" in m.reason[0]
    assert m.report(beat(seq=11), now=11.0)
    assert m.state[0] == NodeState.UP and m.reason[0].startswith("recovered")


def test_recovery_streak_restarts_after_a_bad_report() -> None:
    m = monitor()
    m.report(beat(power="battery"), now=1.0)
    m.report(beat(), now=2.0)
    m.report(beat(), now=3.0)
    m.report(beat(power="battery"), now=4.0)  # streak broken
    m.report(beat(), now=5.0)
    assert not m.report(beat(), now=6.0)
    assert m.state[0] == NodeState.DRAINING
    assert m.report(beat(), now=7.0)
    assert m.state[0] == NodeState.UP


def test_silence_takes_a_node_down_after_the_bound() -> None:
    m = monitor()
    m.report(beat("a"), now=1.0)
    m.report(beat("b"), now=1.0)
    assert m.tick(now=3.9) == []
    assert m.tick(now=4.01) == [0, 1]
    assert "missed 3 heartbeats" in m.reason[0]
    assert m.tick(now=5.0) == []  # already down: no second change


def test_nodes_never_heard_from_go_down_after_the_startup_grace() -> None:
    m = monitor()
    m.report(beat("a"), now=4.0)
    assert m.tick(now=4.9) == []
    assert m.tick(now=5.1) == [1]
    assert "no heartbeat since start-up" in m.reason[1]


def test_flapping_node_is_held_down() -> None:
    # Good and bad alternate every 2 s for 5 minutes: never 3 good reports in a row, so the
    # node goes down once and stays down; the answers toggle once.
    m = monitor()
    states = []
    for second in range(300):
        bad = (second // 2) % 2 == 1
        m.report(beat(seq=second + 1, power="off" if bad else "mains"), now=float(second))
        states.append(int(m.state[0]))
    toggles = sum(1 for x, y in zip(states, states[1:]) if x != y)
    assert toggles == 1 and states[-1] == NodeState.DOWN


def test_failing_again_while_held_down_starts_a_longer_hold_down() -> None:
    # Off at 0 s, good from 2 s, off again at 4 s (still held down), good from 6 s: the
    # second failure is a flap too, so the node waits 20 s from 4 s, not 10 s from 0 s.
    # (Found by the flapping-node load test: the node came back between two bounces.)
    m = monitor()
    m.report(beat(seq=1, power="off"), now=0.0)
    m.report(beat(seq=2), now=2.0)
    m.report(beat(seq=3), now=3.0)
    m.report(beat(seq=4, power="off"), now=4.0)
    assert "failed again while held down" in m.reason[0]
    assert m.hold_down[0] == 2 * SETTINGS.hold_down_s
    for t in range(6, 24):
        assert not m.report(beat(seq=t), now=float(t)), t
    assert m.report(beat(seq=24), now=24.0)
    assert m.state[0] == NodeState.UP


def test_silence_while_held_down_after_good_reports_is_a_flap() -> None:
    m = monitor()
    m.report(beat(seq=1, power="off"), now=0.0)
    m.report(beat(seq=2), now=1.0)
    assert m.tick(now=4.5) == []  # no state change: it is down already
    assert m.hold_down[0] == 2 * SETTINGS.hold_down_s and m.last_down[0] == 4.5
    assert "failed again while held down" in m.reason[0]


def test_hold_down_doubles_for_a_node_that_keeps_failing_after_recovery() -> None:
    # Down for 1 s every 15 s until 200 s, then stable. Each failure soon after a recovery,
    # or while held down, doubles the hold-down: once it is longer than the 15 s between
    # failures the node stays out while it keeps failing, and it returns after the last one
    # once the (maximum) hold-down has passed.
    m = monitor()
    recoveries = []
    previous = int(m.state[0])
    last_failure = 0
    for second in range(600):
        bad = second % 15 == 0 and second <= 200
        last_failure = second if bad else last_failure
        m.report(beat(seq=second + 1, power="off" if bad else "mains"), now=float(second))
        if previous == NodeState.DOWN and m.state[0] == NodeState.UP:
            recoveries.append(second)
        previous = int(m.state[0])
    assert m.hold_down[0] == SETTINGS.max_hold_down_s
    assert len(recoveries) == 2 and recoveries[0] == SETTINGS.hold_down_s
    assert (
        last_failure + SETTINGS.max_hold_down_s
        <= recoveries[1]
        <= last_failure + SETTINGS.max_hold_down_s + 1
    )
    assert m.state[0] == NodeState.UP


def test_admin_override_wins_and_up_clears_it() -> None:
    m = monitor()
    health = NodeHealth(("a", "b"), m)
    assert health.heartbeat(beat("a", power="battery"), now=1.0)
    assert health.states().tolist() == [NodeState.DRAINING, NodeState.UP]
    assert health.set_admin_state("a", "down")
    assert health.status()[0].reason == "admin: set down by operator"
    assert not health.heartbeat(beat("a", seq=2), now=2.0)  # monitor improves; override holds
    assert health.set_admin_state("a", "up")
    assert health.states().tolist()[0] == NodeState.DRAINING  # back to what the monitor says


def test_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nodes.json"
    first = NodeHealth(("a", "b"), monitor())
    first.heartbeat(beat("a", power="off"), now=1.0)
    first.set_admin_state("b", "drain")
    first.save(path)
    assert not list(path.parent.glob(".*.tmp"))  # written atomically: no temp file left
    second = NodeHealth(("a", "b"), monitor())
    assert second.load(path, now=0.0) == []
    assert second.states().tolist() == [NodeState.DOWN, NodeState.DRAINING]
    assert "restored" in second.status()[0].reason and second.status()[1].admin_state == "drain"
    # A restored down node still needs the hold-down and good reports to return.
    for t in range(1, 4):
        second.heartbeat(beat("a", seq=t), now=float(t))
    assert second.states().tolist()[0] == NodeState.DOWN


def test_unreadable_state_file_is_ignored_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "nodes.json"
    path.write_text("{broken")
    health = NodeHealth(("a", "b"), monitor())
    warnings = health.load(path, now=0.0)
    assert len(warnings) == 1 and "unreadable" in warnings[0]
    assert health.states().tolist() == [NodeState.UP, NodeState.UP]


def test_the_state_file_is_written_in_pieces_that_join_to_one_json_dump(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from router.health import state as state_module

    monkeypatch.setattr(state_module, "JSON_PIECE_ITEMS", 3)
    nodes = {
        f"n{i}": {"state": "up", "since": i / 7, "admin_state": None} for i in range(10, 0, -1)
    }
    data = {"saved_at": 1.5, "nodes": nodes, "replay": {"a": [1, 2]}, "empty": {}, "list": [3]}
    pieces = list(state_module.json_pieces(data))
    assert "".join(pieces) == json.dumps(data, sort_keys=True)
    assert max(len(p) for p in pieces) < len(json.dumps(nodes)) / 2  # the nodes went in pieces
