"""Run the coverage-guided fuzzer (atheris, libFuzzer) over the wire parser and both paths.

    python -m tests.fuzz.run --seconds 3600                  # an hour; crashes to tests/fuzz/crashes/
    python -m tests.fuzz.run --seconds 30 --crashes DIR      # what tests/test_fuzz.py runs
    python -m tests.fuzz.run --runs 100000 --corpus DIR      # a fixed number of inputs, keep the corpus

The Python modules of the answer path (router.dns.wire, .engine, .answers) are instrumented
for coverage; the compiled path (numba machine code) is not, and is checked against the
Python path on every input instead. Exit 0: no finding; otherwise libFuzzer's exit code and
a ``crash-*`` file in the crashes directory (replayed by tests/test_fuzz.py from then on).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

import atheris

import router.dns.fast_answer  # noqa: E402,F401 - first: the compiled path stays as it is
from router.dns import answers, engine, wire  # noqa: E402

# Instrumented for coverage: the Python answer path (every function and method of these
# modules, in place). Not numba's functions: numba compiles from the bytecode, which
# instrumentation changes (so no import hook, which would catch router.geo._lpm too).
INSTRUMENTED = (wire, engine, answers)


def instrument(modules: tuple = INSTRUMENTED) -> int:
    count = 0
    for module in modules:
        for value in list(vars(module).values()):
            functions = []
            if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
                functions.append(value)
            elif isinstance(value, type) and value.__module__ == module.__name__:
                for member in vars(value).values():
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    if isinstance(member, property):
                        member = member.fget
                    if isinstance(member, types.FunctionType):
                        functions.append(member)
            for function in functions:
                atheris.instrument_func(function)
                count += 1
    return count


from tests.fuzz.harness import Harness  # noqa: E402
from tests.fuzz.seeds import write_corpus  # noqa: E402

HERE = Path(__file__).resolve().parent
MAX_LEN = 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="libFuzzer -max_total_time (60)")
    parser.add_argument("--runs", type=int, default=-1, help="libFuzzer -runs (default: unlimited)")
    parser.add_argument("--crashes", type=Path, default=HERE / "crashes",
                        help="where crash files go (default tests/fuzz/crashes/)")  # fmt: skip
    parser.add_argument(
        "--corpus", type=Path, help="corpus directory to keep (default: a temporary one)"
    )
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer -seed (1)")
    args, extra = parser.parse_known_args(argv)
    args.crashes.mkdir(parents=True, exist_ok=True)
    tmp = None
    corpus = args.corpus
    if corpus is None:
        tmp = tempfile.TemporaryDirectory(prefix="fuzz-corpus-")
        corpus = Path(tmp.name)
    seeds = write_corpus(corpus)
    started = time.monotonic()
    instrumented = instrument()
    harness = Harness()
    harness.fast.respond(b"\x00" * 12, "127.0.0.1", True)  # compiled (or loaded) before the clock
    print(f"fuzz: {instrumented} functions instrumented, {seeds} seeds in {corpus}, harness ready in {time.monotonic() - started:.1f} s",
          flush=True)  # fmt: skip
    libfuzzer = [sys.argv[0], f"-max_total_time={args.seconds}", f"-runs={args.runs}", f"-seed={args.seed}",
                 f"-max_len={MAX_LEN}", f"-artifact_prefix={args.crashes}/", "-print_final_stats=1",
                 *extra, str(corpus)]  # fmt: skip
    atheris.Setup(libfuzzer, harness.one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
