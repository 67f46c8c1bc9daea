"""``client_map:`` and ``cache_dir:`` in deployment.yaml (router/config/deployment.py).

The exact problem texts of broken client-map settings are rows of the table in
test_router_config.py; here: every way of naming sources loads, the compiled map is
cached where deployment.yaml says and reused by the next load, and a damaged database is
reported at the deployment.yaml line that names it.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
from pathlib import Path

import pytest

from router.config import ConfigError, load_deployment
from router.geo import cache
from router.geo.clientmap import ClientMap
from router.geo.importers import build_client_map

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "clientmap"
TAIL = "latency: ../geodata/country-rtt.csv\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A copy of the sample deployment (zones/ and geodata/) plus the client-map fixtures."""
    shutil.copytree(REPO_ROOT / "zones", tmp_path / "zones")
    shutil.copytree(
        REPO_ROOT / "geodata", tmp_path / "geodata", ignore=shutil.ignore_patterns("*.py")
    )
    for name in ("coverage.json", "deep-coverage.json", "overrides.csv"):
        shutil.copy(FIXTURES / name, tmp_path / "geodata" / name)
    return tmp_path


def settings(root: Path, text: str) -> Path:
    (root / "zones" / "deployment.yaml").write_text(text + TAIL, encoding="utf-8")
    return root / "zones"


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    count: list[int] = []

    def counting(sources: list) -> ClientMap:
        count.append(1)
        return build_client_map(sources)

    monkeypatch.setattr(cache, "build_client_map", counting)
    return count


def group_of(cmap: ClientMap, address: str) -> str:
    return cmap.groups.describe(cmap.lookup(ipaddress.ip_address(address))[0])


@pytest.mark.parametrize(
    ("client_map", "address", "described"),
    [
        ("../geodata/iberia-clients.mmdb", "83.44.10.1", "AS3352 TELEFONICA DE ESPANA S.A.U., ES"),
        ("../geodata/overrides.csv", "198.51.100.70", "AS64500 Example ISP business, ES"),
        ("../geodata/coverage.json", "198.51.100.200", "mad-norte, 40.48,-3.69"),
        ("../geodata/deep-coverage.json", "198.51.100.1", "olt-retiro, 40.42,-3.68"),
    ],
)
def test_one_path_names_its_format(
    root: Path, client_map: str, address: str, described: str
) -> None:
    deployment = load_deployment(settings(root, f"client_map: {client_map}\n"))
    assert group_of(deployment.client_map, address) == described


def test_a_list_of_sources(root: Path) -> None:
    directory = settings(root, (
        "client_map:\n"
        "  - mmdb: ../geodata/iberia-clients.mmdb\n"
        "  - czf: ../geodata/coverage.json\n"
        "    asn: 3352\n"
        "    country: ES\n"
        "  - dczf: ../geodata/deep-coverage.json\n"
        "  - csv: ../geodata/overrides.csv\n"
    ))  # fmt: skip
    cmap = load_deployment(directory).client_map
    assert group_of(cmap, "83.44.10.1") == "AS3352 TELEFONICA DE ESPANA S.A.U., ES"  # database
    assert group_of(cmap, "198.51.100.200") == "AS3352 mad-norte, ES"  # coverage zone, with its asn
    assert group_of(cmap, "198.51.100.1") == "olt-retiro, 40.42,-3.68"  # deep zone: longer prefix
    assert group_of(cmap, "198.51.100.70") == "AS64500 Example ISP business, ES"  # prefix list /26
    assert cmap.lookup(ipaddress.ip_address("192.0.2.200")) == (0, 25)  # blanked out by the list


def test_the_cache_is_used_by_the_next_load(root: Path, builds: list[int]) -> None:
    directory = settings(root, "client_map: ../geodata/iberia-clients.mmdb\n")
    first = load_deployment(directory)
    (cached,) = (root / "var" / "cache").glob("client-map-*.cmap")  # the default place
    mtime = cached.stat().st_mtime_ns
    second = load_deployment(directory)
    assert len(builds) == 1 and cached.stat().st_mtime_ns == mtime
    assert second.client_map.lookup(ipaddress.ip_address("83.44.10.1")) == first.client_map.lookup(
        ipaddress.ip_address("83.44.10.1")
    )
    # changed sources are noticed on the next load, and the old cache file goes
    settings(
        root,
        "client_map:\n  - mmdb: ../geodata/iberia-clients.mmdb\n  - csv: ../geodata/overrides.csv\n",
    )
    load_deployment(directory)
    assert len(builds) == 2 and not cached.exists()


def test_cache_dir_setting(root: Path, builds: list[int]) -> None:
    directory = settings(
        root, "client_map: ../geodata/iberia-clients.mmdb\ncache_dir: ../somewhere/else\n"
    )
    load_deployment(directory)
    load_deployment(directory)
    assert len(builds) == 1
    assert len(list((root / "somewhere" / "else").glob("client-map-*.cmap"))) == 1
    assert not (root / "var" / "cache").exists()


def test_unwritable_cache_dir_still_loads(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    (root / "not-a-dir").write_text("")
    directory = settings(
        root, "client_map: ../geodata/iberia-clients.mmdb\ncache_dir: ../not-a-dir/cache\n"
    )
    with caplog.at_level(logging.WARNING, logger="router.geo.cache"):
        deployment = load_deployment(directory)
    assert group_of(deployment.client_map, "83.44.10.1").startswith("AS3352 ")
    assert "client map not cached: cannot write" in caplog.text


def test_a_damaged_database_is_reported_at_the_line_naming_it(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "geodata" / "iberia-clients.mmdb").write_bytes(b"\x00" * 4096)
    settings(
        root,
        "# comment\nclient_map:\n  - csv: ../geodata/overrides.csv\n  - mmdb: ../geodata/iberia-clients.mmdb\n",
    )
    monkeypatch.chdir(root)
    with pytest.raises(ConfigError) as caught:
        load_deployment(Path("zones"))
    (problem,) = caught.value.problems
    assert (problem.path, problem.line) == ("zones/deployment.yaml", 4)
    assert problem.message.startswith(
        "client_map[1]: geodata/iberia-clients.mmdb: cannot open MaxMind database: "
    ), problem.message
