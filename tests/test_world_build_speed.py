"""What makes the full build fast on a 20,000-node world, held equal to the slow ways:
the one-line flow-mapping reader of router/config/_yaml.py against PyYAML, the on-net
eligibility of router/steering/model.py against a per-ASN, per-node reference, and
loadtest/full_build.py's steps on the sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from router.config import _yaml
from router.steering.model import onnet_eligibility

REPO = Path(__file__).resolve().parents[1]


def slow_load(path: Path) -> tuple[_yaml.LocatedYaml | None, list]:
    """load_yaml with the flow-line reader turned off: PyYAML for everything."""
    original = _yaml._load_flow_lines
    _yaml._load_flow_lines = lambda text, display: None
    try:
        return _yaml.load_yaml(path, str(path))
    finally:
        _yaml._load_flow_lines = original


def types_of(value: object) -> object:
    if isinstance(value, dict):
        return {k: types_of(v) for k, v in value.items()}
    if isinstance(value, list):
        return [types_of(v) for v in value]
    return type(value).__name__  # 1 == True == 1.0 in Python: compare the types too


ACCEPTED = {
    "generated": (
        '# comment\nsites:\n  - {id: es-mad, metro: "Madrid", country: "ES", kind: isp, '
        "lat: 40.4168, lon: -3.7038}\n\nnodes:\n  # AS3352\n  - {id: n-1, asn: 3352, site: es-mad, "
        'lat: 40.4, lon: -3.7, ipv4: 198.18.0.1, ipv6: "2001:db8:0:1::1", capacity_gbps: 100}\n'
    ),
    "escapes and comments": (
        'sites:  # top\n  - {id: br-sp, metro: "S\\u00e3o Paulo \\"SP\\"", count: 0, dx: +5, dy: -0.5}  # c\n'
    ),
    "several items": "a:\n  - {k: 1}\n  - {k: 2, j: x-y}\nb:\n  - {k: 3}\n",
}

REFUSED = {  # each read by PyYAML instead (which may read it differently, or report it)
    "bool word": "a:\n  - {k: no}\n",
    "bool key": "a:\n  - {on: 1}\n",
    "y key": "a:\n  - {y: 1}\n",
    "octal": "a:\n  - {k: 0777}\n",
    "exponent": "a:\n  - {k: 1e5}\n",
    "leading dot float": "a:\n  - {k: .5}\n",
    "underscore int": "a:\n  - {k: 1_000}\n",
    "surrogate escape": 'a:\n  - {k: "\\ud83d\\ude00"}\n',
    "other escape": 'a:\n  - {k: "a\\tb"}\n',
    "duplicate key": "a:\n  - {k: 1, k: 2}\n",
    "duplicate top key": "a:\n  - {k: 1}\na:\n  - {k: 2}\n",
    "key without items": "a:\nb:\n  - {k: 1}\n",
    "last key without items": "a:\n  - {k: 1}\nb:\n",
    "block mapping": "a:\n  - k: 1\n",
    "inline value": "a: 1\n",
    "tab": "a:\n  - {k:\t1}\n",
    "form feed": "a:\n  - {k: 1}\n\x0c\n",
    "crlf": "a:\r\n  - {k: 1}\r\n",
    "comment inside": "a:\n  - {k: 1 # no}\n",
    "nested": "a:\n  - {k: {j: 1}}\n",
    "list value": "a:\n  - {k: [1, 2]}\n",
    "other indent": "a:\n- {k: 1}\n",
    "empty": "",
    "single quotes": "a:\n  - {k: 'x'}\n",
    "null word": "a:\n  - {k: null}\n",
    "tilde": "a:\n  - {k: ~}\n",
    "colon in plain": "a:\n  - {k: a:b}\n",
    "document marker": "---\na:\n  - {k: 1}\n",
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepted_files_read_exactly_as_pyyaml_reads_them(tmp_path: Path, name: str) -> None:
    path = tmp_path / "doc.yaml"
    path.write_text(ACCEPTED[name], encoding="utf-8")
    fast = _yaml._load_flow_lines(ACCEPTED[name], str(path))
    assert fast is not None
    slow, problems = slow_load(path)
    assert slow is not None and problems == []
    assert fast.data == slow.data and types_of(fast.data) == types_of(slow.data)
    assert fast.lines == slow.lines and fast.key_order == slow.key_order


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_anything_else_goes_to_pyyaml(name: str) -> None:
    assert _yaml._load_flow_lines(REFUSED[name], "doc.yaml") is None


def test_a_refused_file_still_reports_its_problem(tmp_path: Path) -> None:
    path = tmp_path / "doc.yaml"
    path.write_text(REFUSED["duplicate key"], encoding="utf-8")
    doc, problems = _yaml.load_yaml(path, "doc.yaml")
    assert [str(p) for p in problems] == ['doc.yaml:2: duplicate key "k" (first defined at line 2)']


@pytest.mark.parametrize(
    "path",
    [REPO / "zones" / "nodes.yaml", REPO / "var" / "world" / "nodes.yaml"],
    ids=["sample", "world"],
)
def test_the_inventories_read_as_pyyaml_reads_them(path: Path) -> None:
    if not path.is_file():
        pytest.skip(f"{path} not built (geodata/build_world.py)")
    text = path.read_text(encoding="utf-8")
    fast = _yaml._load_flow_lines(text, str(path))
    assert fast is not None  # the generated shape, so the fast reader takes it
    slow, problems = slow_load(path)
    assert slow is not None and problems == []
    assert fast.data == slow.data and types_of(fast.data) == types_of(slow.data)
    assert fast.lines == slow.lines and fast.key_order == slow.key_order


def onnet_reference(
    served: tuple[frozenset[int] | None, ...], group_asn: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per ASN (ascending), per node: the row of nodes that accept it, numbered as first seen."""
    rows = [np.ones(len(served), dtype=np.bool_)]
    row_of = {rows[0].tobytes(): 0}
    group_row = np.zeros(len(group_asn), dtype=np.int32)
    for asn in sorted(set(group_asn.tolist())):
        row = np.array([s is None or asn in s for s in served], dtype=np.bool_)
        if row.tobytes() not in row_of:
            row_of[row.tobytes()] = len(rows)
            rows.append(row)
        group_row[group_asn == asn] = row_of[row.tobytes()]
    return np.array(rows), group_row


@pytest.mark.parametrize("seed", range(40))
def test_onnet_eligibility_equals_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    asns = rng.integers(1, 20, size=8)
    served = tuple(
        None
        if rng.random() < 0.4
        else frozenset(rng.choice(asns, size=rng.integers(1, 4)).tolist())
        for _ in range(int(rng.integers(1, 25)))
    )
    group_asn = rng.choice(np.concatenate([asns, [0, 99]]), size=int(rng.integers(1, 60)))
    allowed, group_row = onnet_eligibility(served, group_asn.astype(np.int64))
    want_allowed, want_row = onnet_reference(served, group_asn.astype(np.int64))
    assert allowed.dtype == np.bool_ and group_row.dtype == np.int32
    assert np.array_equal(allowed, want_allowed) and np.array_equal(group_row, want_row)


def test_full_build_times_every_step_of_the_sample() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.full_build", "--child", "--zones", str(REPO / "zones")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    steps = json.loads(done.stdout.strip().splitlines()[-1])
    parts = ("files_read", "load_deployment", "prepare", "plan")
    assert all(steps[p] >= 0 for p in parts) and steps["nodes"] == 18
    assert abs(sum(steps[p] for p in parts) - steps["total"]) < 0.01
