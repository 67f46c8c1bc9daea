"""The house rules on imports: they point down, never up.

The CLI and the API call the serving runtime (``router/service/``), which wires the
libraries; no library imports the runtime, the API or the CLI; ``geo`` imports no other
package of the router, and ``config`` none but ``geo``. Read from the source (``ast``),
imports inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROUTER = Path(__file__).resolve().parents[1] / "router"
LIBRARIES = ("agent", "anycast", "cluster", "config", "dns", "geo", "health", "steering")
ABOVE_LIBRARIES = ("service", "api", "cli", "explain", "plan", "simulator")
# Utilities any package may use (not a package of the router in the sense of the rules).
SHARED = {"_jit", "_gc"}

ALLOWED_ONLY = {
    "geo": {"geo"},
    "config": {"config", "geo"},
}
FORBIDDEN = {
    **{library: set(ABOVE_LIBRARIES) for library in LIBRARIES},
    "service": {"api", "cli", "explain", "plan", "simulator"},
    "api": {"cli", "explain", "plan", "simulator"},
}


def router_imports(package: str) -> dict[str, set[str]]:
    """For each module of ``router/<package>``: the router packages it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROUTER / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
                if node.module == "router":
                    modules = [f"router.{alias.name}" for alias in node.names]
            for module in modules:
                parts = module.split(".")
                if parts[0] == "router" and len(parts) > 1 and parts[1] not in SHARED:
                    names.add(parts[1])
        found[str(path.relative_to(ROUTER.parent))] = names
    return found


def test_the_imports_are_read() -> None:
    # The reader itself: service wires config, steering, health and dns.
    imported = set().union(*router_imports("service").values())
    assert {"config", "steering", "health", "dns"} <= imported


@pytest.mark.parametrize("package", sorted(ALLOWED_ONLY))
def test_geo_and_config_import_only_below_them(package: str) -> None:
    wrong = {m: names - ALLOWED_ONLY[package] for m, names in router_imports(package).items()}
    assert {m: n for m, n in wrong.items() if n} == {}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_nothing_imports_what_stands_above_it(package: str) -> None:
    wrong = {m: names & FORBIDDEN[package] for m, names in router_imports(package).items()}
    assert {m: n for m, n in wrong.items() if n} == {}


def test_reference_implementations_live_under_tests() -> None:
    assert not (ROUTER / "steering" / "reference.py").exists()
    assert (Path(__file__).parent / "reference.py").exists()
