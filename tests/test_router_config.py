"""``router check`` and ``router.config.load_deployment``: every problem, reported as path:line.

Each test copies the sample deployment (``zones/`` and ``geodata/``) into ``tmp_path`` so that
``deployment.yaml``'s relative paths (``../geodata/...``) still resolve, then overlays one case
directory from ``tests/config/<case>/``:

- files at the top of the case directory replace or add files in ``tmp_path/zones/``;
- files under ``<case>/geodata/`` replace or add files in ``tmp_path/geodata/``.

The command runs with ``cwd=tmp_path`` and the argument ``zones``, so problems print as
``zones/nodes.yaml:LINE: message``. A negative row lists the exact problem lines (everything
but the summary line). Rows marked ``xfail(strict=True)`` hold the text the message *should*
have; the reason says what is printed today.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from router.cli import main as router_main
from router.config import ConfigError, Problem, load_deployment

REPO_ROOT = Path(__file__).resolve().parents[1]
CASES = Path(__file__).resolve().parent / "config"
ROUTER = Path(sys.executable).with_name("router")

LOCATED_LINE = re.compile(r"^[^:]+:\d+: .+$")
SUMMARY = re.compile(r"^(\d+) problem\(s\) in zones$")


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """A private copy of the sample deployment: ``tmp_path`` holding zones/ and geodata/."""
    shutil.copytree(REPO_ROOT / "zones", tmp_path / "zones")
    shutil.copytree(REPO_ROOT / "geodata", tmp_path / "geodata")
    return tmp_path


def overlay(root: Path, case: str) -> None:
    """Copy the files of ``tests/config/<case>/`` over the deployment copy in ``root``."""
    source = CASES / case
    assert source.is_dir(), f"missing fixture directory {source}"
    for item in sorted(source.iterdir()):
        if item.is_dir():
            assert item.name == "geodata", f"unexpected fixture subdirectory {item}"
            for data_file in sorted(item.iterdir()):
                shutil.copy(data_file, root / "geodata" / data_file.name)
        else:
            shutil.copy(item, root / "zones" / item.name)


def check_in_process(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    monkeypatch.chdir(root)
    code = router_main(["check", "zones"])
    out, err = capsys.readouterr()
    return code, out, err


def check_subprocess(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROUTER), "check", "zones"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def problem_lines(stderr: str) -> list[str]:
    """The problem lines of ``router check`` stderr; checks the summary line's count."""
    lines = stderr.splitlines()
    assert lines, "router check printed nothing on stderr"
    summary = SUMMARY.match(lines[-1])
    assert summary, f"last stderr line is not the summary: {lines[-1]!r}"
    problems = lines[:-1]
    assert int(summary.group(1)) == len(problems), stderr
    return problems


def case(name: str, *lines: str, bug: str | None = None) -> Any:
    """One negative row: the case directory and its exact problem lines.

    ``bug`` marks a row whose expected text is what the message *should* say; the reason
    quotes what ``router check`` prints today.
    """
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(name, list(lines), id=name, marks=marks)


NEGATIVE = [
    # --- nodes.yaml ----------------------------------------------------------------------------
    case(
        "bad-yaml-syntax",
        "zones/nodes.yaml:7: YAML syntax error: mapping values are not allowed here (column 11)",
    ),
    case(
        "bad-yaml-unclosed-flow-mapping",
        "zones/nodes.yaml:7: YAML syntax error: expected ',' or '}', but got '{' (column 5), while parsing a flow mapping that starts at line 6",
    ),
    case(
        "unknown-node-field",
        'zones/nodes.yaml:13: node "ix-mad-1": unknown field "capacity_gpbs" (valid fields: id, asn, site, lat, lon, ipv4, ipv6, capacity_gbps, anycast_prefixes, health_url, serves, serves_asns)',
    ),
    case(
        "duplicate-node-id",
        'zones/nodes.yaml:13: duplicate node id "ix-mad-1" (first defined at line 5)',
    ),
    case(
        "node-missing-site",
        'zones/nodes.yaml:15: node "tef-mad-1": site "tef-mad" is not defined in sites '
        "(defined: mad-espanix)",
    ),
    case(
        "missing-required-field",
        'zones/nodes.yaml:5: node "ix-mad-1": missing required field "asn"',
    ),
    case(
        "wrong-type-asn",
        'zones/nodes.yaml:6: node "ix-mad-1": asn: Input should be a valid integer, '
        "unable to parse string as an integer, got 'abc'",
    ),
    case(
        "latitude-out-of-range",
        'zones/nodes.yaml:8: node "ix-mad-1": lat: Input should be less than or equal to 90, '
        "got 140.447",
    ),
    case(
        "invalid-ipv4",
        'zones/nodes.yaml:10: node "ix-mad-1": ipv4: Input is not a valid IPv4 address, '
        "got '203.0.113.256'",
    ),
    case(
        "duplicate-site-id",
        'zones/nodes.yaml:5: duplicate site id "mad-espanix" (first defined at line 3)',
    ),
    case(
        "duplicate-node-address",
        'zones/nodes.yaml:18: node "ix-mad-2": ipv4 203.0.113.11 is already used by node '
        '"ix-mad-1"',
    ),
    case(
        "two-problems-one-file",
        'zones/nodes.yaml:12: node "ix-mad-1": capacity_gbps: Input should be greater than 0, got 0',
        'zones/nodes.yaml:21: node "ix-mad-2": unknown field "rack" (valid fields: id, asn, site, lat, lon, ipv4, ipv6, capacity_gbps, anycast_prefixes, health_url, serves, serves_asns)',
    ),
    case(
        "invalid-site-node-reported-undefined",
        "zones/nodes.yaml:3: site \"mad-espanix\": kind: Input should be 'isp', 'ixp' or 'pop', got 'datacenter'",
    ),
    # --- several files at once -----------------------------------------------------------------
    case(
        "problems-in-two-files",
        "zones/cdn.example.zone:6: unknown rdatatype 'AAA': mail  IN AAA  2001:db8:25::1",
        'zones/nodes.yaml:15: node "ix-lis-1": site "lis-gigapix" is not defined in sites (defined: mad-espanix)',
    ),
    # --- the zone file -------------------------------------------------------------------------
    case(
        "zone-syntax-error",
        "zones/cdn.example.zone:5: unknown rdatatype 'MXX': IN MXX  10 mail",
    ),
    case(
        "zone-syntax-error-end-of-line",
        "zones/cdn.example.zone:5: expecting an integer: IN MX   mail",
    ),
    case(
        "zone-two-syntax-errors",
        "zones/cdn.example.zone:7: unknown rdatatype 'AAA': mail    IN AAA  2001:db8:25::1",
        "zones/cdn.example.zone:9: unknown rdatatype 'AAA': origin  IN AAA  2001:db8:80::1",
    ),
    case(
        "zone-two-syntax-errors-end-of-line",
        "zones/cdn.example.zone:6: expecting an integer: @       IN MX   mail",
        "zones/cdn.example.zone:8: expecting an integer: shop    IN MX   mail",
    ),
    case(
        "zone-bad-ipv4-address",
        "zones/cdn.example.zone:6: Text input is malformed: mail    IN A    203.0.113.500",
    ),
    case(
        "zone-cname-and-other-data",
        "zones/cdn.example.zone:7: a name with a CNAME record cannot have other records (RFC 1034 3.6.2): images  IN A     203.0.113.80",
    ),
    case(
        "zone-ns-without-glue",
        "zones/cdn.example.zone:5: NS target ns2.cdn.example. is inside the zone but has no A or AAAA record (glue)",
    ),
    case(
        "zone-without-ns",
        "zones/cdn.example.zone:3: zone cdn.example. has no NS records at its apex",
    ),
    # --- the policy file -----------------------------------------------------------------------
    case(
        "policy-undefined-policy",
        'zones/cdn.example.policy.yaml:4: undefined policy "wbe" for name "www" '
        "(defined: video, web)",
    ),
    case(
        "policy-unknown-node",
        'zones/cdn.example.policy.yaml:10: policy "video": unknown node "ix-mad-9" in nodes '
        "(not in nodes.yaml)",
    ),
    case(
        "policy-default-site-not-a-site",
        'zones/cdn.example.policy.yaml:7: policy "video": default_site "ix-mad-1" is not a site in nodes.yaml (sites: lis-gigapix, mad-espanix, meo-lis, meo-opo, nos-lis, nos-opo, ora-es-bcn, ora-es-bio, ora-es-mad, par-pop, tef-bcn, tef-mad, tef-svq, vdf-es-bcn, vdf-es-mad, vdf-es-vlc, vdf-pt-lis)',
    ),
    case(
        "policy-keys-out-of-order",
        "zones/cdn.example.policy.yaml:8: keys out of order in policies/video: "
        'expected "nodes" here, found "ttl"',
    ),
    case(
        "policy-steered-name-static-a",
        'zones/cdn.example.policy.yaml:3: name origin.cdn.example. is steered by policy "video" but zones/cdn.example.zone line 25 also gives it static A records',
        'zones/cdn.example.policy.yaml:3: name origin.cdn.example. is steered by policy "video" but zones/cdn.example.zone line 26 also gives it static AAAA records',
    ),
    case(
        "policy-unknown-field",
        'zones/cdn.example.policy.yaml:8: policy "video": unknown field "max_ttl" (valid fields: '
        "answer_count, default_site, expected_peak_gbps, geofence, headroom, load_penalty_ms, nodes, onnet_bonus_ms, pools, probe, rules, ttl, when_all_down)",
    ),
    case(
        "policy-answer-count-zero",
        'zones/cdn.example.policy.yaml:6: policy "video": answer_count: '
        "Input should be greater than or equal to 1, got 0",
    ),
    case(
        "policy-when-all-down-invalid",
        'zones/cdn.example.policy.yaml:10: policy "video": when_all_down: '
        "Input should be 'fail_open', got 'something-else'",
    ),
    case(
        "policy-without-zone-file",
        "zones/other.example.policy.yaml:1: no zone file other.example.zone for this policy file",
    ),
    # --- deployment.yaml and the data files it points at --------------------------------------
    case(
        "deployment-missing-client-map",
        "zones/deployment.yaml:2: client_map: no such file geodata/iberia-client.mmdb (paths are relative to deployment.yaml)",
    ),
    case(
        "health-key-unknown-node",
        'zones/node-keys.sample.yaml:23: key for unknown node "tef-mad-9" (not in nodes.yaml)',
    ),
    case(
        "health-key-not-hex",
        'zones/node-keys.sample.yaml:21: node "ix-lis-1": key must be hexadecimal',
    ),
    case(
        "health-node-without-key",
        'zones/node-keys.sample.yaml:4: node "pop-par-1" has no key: it could never report',
    ),
    case(
        "latency-rtt-not-a-number",
        "geodata/country-rtt.csv:3: rtt_ms must be a number, got 'n/a'",
    ),
    # --- client_map: the sources and their files ----------------------------------------------
    case(
        "client-map-csv-bad-row",
        "geodata/overrides.csv:3: 83.44.11.0/24: asn must be a whole number, got 'AS3352'",
    ),
    case(
        "client-map-czf-bad-network",
        "geodata/coverage.json:6: zone \"mad\" network[1]: '83.44.11.1/24' has host bits set (the network is 83.44.11.0/24)",
    ),
    case(
        "client-map-unknown-kind",
        'zones/deployment.yaml:4: client_map[1]: unknown field "geoip" (valid fields: mmdb, czf, dczf, csv, asn, country)',
        "zones/deployment.yaml:5: client_map[2]: give exactly one of mmdb, czf, dczf, csv (the kind of file, then its path)",
    ),
    case(
        "client-map-source-missing",
        "zones/deployment.yaml:4: client_map[1]: no such file geodata/deep-coverage.json (paths are relative to deployment.yaml)",
        "zones/deployment.yaml:5: client_map[2]: asn and country apply to czf and dczf sources only",
    ),
    case(
        "client-map-not-a-list",
        "zones/deployment.yaml:2: deployment.yaml: client_map: must be a file path or a list of sources (mmdb:, czf:, dczf:, csv:), got {'mmdb': '../geodata/iberia-clients.mmdb'}",
    ),
    case(
        "client-map-unknown-format",
        "zones/deployment.yaml:2: client_map: geodata/country-locations.txt: cannot tell the format from the file name: use .mmdb, .csv or .json, or a list entry naming it (mmdb:, czf:, dczf:, csv:)",
    ),
]


@pytest.mark.parametrize(("case", "expected"), NEGATIVE)
def test_check_reports_every_problem(
    case: str,
    expected: list[str],
    deployment: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    overlay(deployment, case)
    code, out, err = check_in_process(deployment, monkeypatch, capsys)
    assert (code, out) == (1, "")
    assert problem_lines(err) == expected


# (case directory, or None for the untouched sample; fragments the OK line must contain)
POSITIVE = [
    pytest.param(
        None,
        ["zones: OK:", "1 zone(s) (cdn.example.)", "18 nodes", "2 policies", "2 steered names"],
        id="sample",
    ),
    pytest.param(
        "valid-small-inventory",
        ["zones: OK:", "1 zone(s) (cdn.example.)", "2 nodes", "1 policies", "1 steered names"],
        id="valid-small-inventory",
    ),
    pytest.param(
        "client-map-sources",
        ["zones: OK:", "18 nodes", "2033 client groups"],
        id="client-map-sources",
    ),
]


@pytest.mark.parametrize(("case", "fragments"), POSITIVE)
def test_check_accepts_valid_deployment(
    case: str | None,
    fragments: list[str],
    deployment: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if case is not None:
        overlay(deployment, case)
    code, out, err = check_in_process(deployment, monkeypatch, capsys)
    assert (code, err) == (0, "")
    assert len(out.splitlines()) == 1
    for fragment in fragments:
        assert fragment in out


def test_console_script_accepts_untouched_sample(deployment: Path) -> None:
    result = check_subprocess(deployment)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "OK" in result.stdout
    assert "18 nodes" in result.stdout
    assert "2 steered names" in result.stdout


def test_console_script_lines_are_located(deployment: Path) -> None:
    """Every problem line of a case with problems in three files is ``path:line: message``."""
    overlay(deployment, "problems-in-two-files")
    policy = CASES / "policy-keys-out-of-order" / "cdn.example.policy.yaml"
    shutil.copy(policy, deployment / "zones")
    result = check_subprocess(deployment)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = problem_lines(result.stderr)
    assert [line.split(":", 1)[0] for line in lines] == [
        "zones/cdn.example.policy.yaml",
        "zones/cdn.example.zone",
        "zones/nodes.yaml",
    ]
    for line in lines:
        assert LOCATED_LINE.match(line), line


def test_console_script_matches_in_process(
    deployment: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real console script prints exactly what ``router.cli.main`` prints in-process."""
    overlay(deployment, "two-problems-one-file")
    result = check_subprocess(deployment)
    code, out, err = check_in_process(deployment, monkeypatch, capsys)
    assert (result.returncode, result.stdout, result.stderr) == (code, out, err)


def test_load_deployment_raises_sorted_problems(
    deployment: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    overlay(deployment, "problems-in-two-files")
    monkeypatch.chdir(deployment)
    with pytest.raises(ConfigError) as info:
        load_deployment(Path("zones"))
    problems = info.value.problems
    assert all(isinstance(p, Problem) for p in problems)
    assert problems == sorted(problems)
    assert problems == [
        Problem(
            "zones/cdn.example.zone", 6, "unknown rdatatype 'AAA': mail  IN AAA  2001:db8:25::1"
        ),
        Problem(
            "zones/nodes.yaml",
            15,
            'node "ix-lis-1": site "lis-gigapix" is not defined in sites (defined: mad-espanix)',
        ),
    ]
    assert str(info.value) == "\n".join(str(p) for p in problems)

    code, _, err = check_in_process(deployment, monkeypatch, capsys)
    assert code == 1
    assert problem_lines(err) == [str(p) for p in problems]


def test_every_fixture_directory_is_a_case() -> None:
    used = {row.values[0] for row in NEGATIVE + POSITIVE if row.values[0] is not None}
    on_disk = {path.name for path in CASES.iterdir() if path.is_dir()}
    assert on_disk == used


def test_libyaml_and_pure_python_parsing_give_the_same_values_and_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Files are composed with libyaml when PyYAML has it; values, lines and key order must
    be exactly what the pure-Python parser gives (problems point at the same lines)."""
    import yaml

    from router.config import _yaml

    if _yaml._FAST_LOADER is yaml.SafeLoader:
        pytest.skip("PyYAML was built without libyaml")
    files = sorted((REPO_ROOT / "zones").glob("*.yaml")) + sorted(
        (REPO_ROOT / "tests" / "config").rglob("*.yaml")
    )
    assert len(files) > 5
    for path in files:
        fast, fast_problems = _yaml.load_yaml(path, path.name)
        monkeypatch.setattr(_yaml, "_FAST_LOADER", yaml.SafeLoader)
        slow, slow_problems = _yaml.load_yaml(path, path.name)
        monkeypatch.undo()
        assert fast_problems == slow_problems, path
        if slow is None:
            assert fast is None
            continue
        assert (fast.data, fast.lines, fast.key_order) == (slow.data, slow.lines, slow.key_order), (
            path
        )
