"""Fuzzing the wire parser and both answer paths (tests/fuzz/, issue 17 item 7).

- the seed corpus and every crash file kept under tests/fuzz/crashes/ go through the harness
  in process (a crash file must pass once its bug is fixed; a known, unfixed one is an
  xfail(strict=True) naming the bug, so the fix turns it into a failure to be unmarked);
- the coverage-guided fuzzer (atheris) runs in a subprocess for a bounded time;
- a differential check: 100,000 generated valid queries through the Python and the compiled
  path, whose bytes must be equal wherever the compiled path answers.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.differential import generate
from tests.fuzz.harness import Harness
from tests.fuzz.seeds import seed_inputs

REPO = Path(__file__).resolve().parents[1]
CRASHES = REPO / "tests" / "fuzz" / "crashes"
FUZZ_SECONDS = 12
DIFFERENTIAL_QUERIES = 100_000
# Crash files whose bug is known and not fixed yet: file name -> the bug. Empty: none open.
KNOWN_BUGS: dict[str, str] = {}


def crash_files() -> list[Path]:
    return sorted(p for p in CRASHES.iterdir() if p.is_file() and p.name != "README.md")


@pytest.fixture(scope="module")
def harness(deployment_dir: Path) -> Harness:
    return Harness(deployment_dir)


@pytest.fixture(scope="module")
def split_harness(deployment_dir: Path) -> Harness:
    return Harness(deployment_dir, split=True)


def test_the_seed_corpus_passes(harness: Harness) -> None:
    seeds = seed_inputs()
    for data in seeds:
        harness.one_input(data)
    assert harness.answered_fast > harness.punted > 0 and len(seeds) > 100


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[p.name]))
        if p.name in KNOWN_BUGS
        else p
        for p in crash_files()
    ]
    or [pytest.param(None, marks=pytest.mark.skip(reason="no crash files kept"))],
    ids=lambda p: p.name if isinstance(p, Path) else "none",
)
def test_kept_crash_replays_clean(harness: Harness, path: Path | None) -> None:
    assert path is not None
    harness.one_input(path.read_bytes())


def test_known_bugs_name_kept_files() -> None:
    names = {p.name for p in crash_files()}
    assert set(KNOWN_BUGS) <= names, set(KNOWN_BUGS) - names


@pytest.mark.timeout(FUZZ_SECONDS + 120)
def test_the_fuzzer_finds_nothing_in_a_bounded_run(tmp_path: Path) -> None:
    crashes = tmp_path / "crashes"
    done = subprocess.run([sys.executable, "-m", "tests.fuzz.run", "--seconds", str(FUZZ_SECONDS), "--crashes",
                           str(crashes), "--corpus", str(tmp_path / "corpus")],
                          cwd=REPO, capture_output=True, text=True, timeout=FUZZ_SECONDS + 90, check=False)  # fmt: skip
    output = done.stdout + done.stderr
    found = sorted(p.name for p in crashes.iterdir()) if crashes.exists() else []
    assert done.returncode == 0 and not found, f"exit {done.returncode}, {found}\n{output[-4000:]}"
    runs = re.search(r"Done (\d+) runs", output)
    assert runs and int(runs.group(1)) > 10_000, output[-2000:]


def test_compiled_and_python_paths_agree_on_100000_generated_queries(
    harness: Harness, split_harness: Harness
) -> None:
    """Half on a table with every group whole, half on one with split groups (the sticky
    pick). Every query is valid, so every one is answered; one in ten replies is also decoded
    with dnspython (all of them get the header and size checks)."""
    checked = 0
    for i, (packet, source, udp) in enumerate(generate(harness, DIFFERENTIAL_QUERIES)):
        pair = harness if i % 2 == 0 else split_harness
        assert pair.check(packet, source, udp, parse=i % 10 == 0) is not None, packet.hex()
        checked += 1
    assert checked == DIFFERENTIAL_QUERIES
    answered = harness.answered_fast + split_harness.answered_fast
    punted = harness.punted + split_harness.punted
    # The compiled path answers all but CNAME chains for other types, wildcards and referrals.
    assert answered > 0.8 * (answered + punted), (answered, punted)
