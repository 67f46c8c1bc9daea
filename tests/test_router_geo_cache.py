"""The compiled client map cache (router/geo/cache.py).

A second load reads the cache instead of the sources; anything that changes the result
(a source's bytes, the sources' order or options) makes a new key and a rebuild; a cache
file that is damaged in any way is ignored and rebuilt; a cache directory that cannot be
written only costs the caching, with a warning.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from router.geo import cache
from router.geo.clientmap import ClientMap, ClientMapError
from router.geo.importers import Source, build_client_map

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "clientmap"
SAMPLE_MMDB = Path(__file__).resolve().parents[1] / "geodata" / "iberia-clients.mmdb"


@pytest.fixture
def sources(tmp_path: Path) -> list[Source]:
    for name in ("coverage.json", "overrides.csv"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    return [
        Source("mmdb", SAMPLE_MMDB),
        Source("czf", tmp_path / "coverage.json", asn=64500, country="ES"),
        Source("csv", tmp_path / "overrides.csv"),
    ]


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the builds ``load_client_map`` makes."""
    count: list[int] = []

    def counting(sources: list[Source]) -> ClientMap:
        count.append(1)
        return build_client_map(sources)

    monkeypatch.setattr(cache, "build_client_map", counting)
    return count


def assert_same_map(a: ClientMap, b: ClientMap) -> None:
    for f in fields(ClientMap):
        if f.name != "groups":
            x, y = getattr(a, f.name), getattr(b, f.name)
            assert x.dtype == y.dtype and np.array_equal(x, y), f.name
    assert a.groups.country == b.groups.country and a.groups.org == b.groups.org
    assert np.array_equal(a.groups.asn, b.groups.asn)
    assert np.array_equal(a.groups.lat, b.groups.lat, equal_nan=True)
    assert np.array_equal(a.groups.lon, b.groups.lon, equal_nan=True)


def cache_files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir()) if directory.exists() else []


def test_second_load_reads_the_cache(
    tmp_path: Path, sources: list[Source], builds: list[int]
) -> None:
    first = cache.load_client_map(sources, tmp_path / "cache")
    assert (first.from_cache, len(builds)) == (False, 1)
    assert first.cache_file is not None and cache_files(tmp_path / "cache") == [first.cache_file]
    assert first.cache_file.name == f"client-map-{cache.cache_key(sources)[:32]}.npz"
    mtime = first.cache_file.stat().st_mtime_ns
    second = cache.load_client_map(sources, tmp_path / "cache")
    assert (second.from_cache, len(builds), second.cache_file) == (True, 1, first.cache_file)
    assert first.cache_file.stat().st_mtime_ns == mtime
    assert_same_map(first.client_map, second.client_map)
    assert_same_map(second.client_map, build_client_map(sources))


def test_cached_arrays_keep_their_dtypes_and_lookups(tmp_path: Path, sources: list[Source]) -> None:
    cache.load_client_map(sources, tmp_path)
    cached = cache.load_client_map(sources, tmp_path).client_map
    built = build_client_map(sources)
    for address in ("83.44.10.1", "198.51.100.70", "2001:db8:100::1", "192.0.2.1"):
        assert cached.lookup(ipaddress.ip_address(address)) == built.lookup(
            ipaddress.ip_address(address)
        )
    assert cached.v4_start.flags.c_contiguous and cached.v6_start_hi.dtype == np.uint64


@pytest.mark.parametrize("change", ["edit a source", "reorder", "czf option", "drop a source"])
def test_a_changed_input_rebuilds(
    tmp_path: Path, sources: list[Source], builds: list[int], change: str
) -> None:
    old = cache.load_client_map(sources, tmp_path / "cache").cache_file
    if change == "edit a source":
        with (tmp_path / "overrides.csv").open("a", encoding="utf-8") as stream:
            stream.write("203.0.113.0/24,64999,ES,,,new\n")
        changed = sources
    elif change == "reorder":
        changed = [sources[0], sources[2], sources[1]]
    elif change == "czf option":
        changed = [sources[0], Source("czf", sources[1].path, asn=64501, country="ES"), sources[2]]
    else:
        changed = sources[:1] + sources[2:]
    loaded = cache.load_client_map(changed, tmp_path / "cache")
    assert (loaded.from_cache, len(builds)) == (False, 2)
    assert loaded.cache_file != old and cache_files(tmp_path / "cache") == [loaded.cache_file]
    assert cache.load_client_map(changed, tmp_path / "cache").from_cache


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def damage_garbage(path: Path) -> None:
    path.write_bytes(b"not a zip file at all")


def damage_flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside an array: the zip CRC no longer matches
    path.write_bytes(bytes(data))


def rewrite(path: Path, **replace: np.ndarray) -> None:
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays.update(replace)
    with path.open("wb") as stream:
        np.savez(stream, **arrays)


def damage_dtype(path: Path) -> None:
    with np.load(path) as npz:
        rewrite(path, v4_start=npz["v4_start"].astype(np.float64))


def damage_group_range(path: Path) -> None:
    with np.load(path) as npz:
        rewrite(path, v4_group=npz["v4_group"] + 100000)


def damage_lengths(path: Path) -> None:
    with np.load(path) as npz:
        rewrite(path, v6_end_lo=npz["v6_end_lo"][:-1])


def damage_missing_array(path: Path) -> None:
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files if name != "group_lat"}
    with path.open("wb") as stream:
        np.savez(stream, **arrays)


def damage_other_key(path: Path) -> None:
    with np.load(path) as npz:
        meta = npz["meta"].tobytes().replace(b'"key": "', b'"key": "0')
    rewrite(path, meta=np.frombuffer(meta, dtype=np.uint8))


DAMAGES = [damage_truncate, damage_garbage, damage_flip_byte, damage_dtype, damage_group_range,
           damage_lengths, damage_missing_array, damage_other_key]  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.__name__ for d in DAMAGES])
def test_a_damaged_cache_is_ignored_and_rebuilt(
    tmp_path: Path,
    sources: list[Source],
    builds: list[int],
    damage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = cache.load_client_map(sources, tmp_path).cache_file
    assert path is not None
    damage(path)
    with caplog.at_level(logging.WARNING, logger="router.geo.cache"):
        loaded = cache.load_client_map(sources, tmp_path)
    assert (loaded.from_cache, len(builds), loaded.cache_file) == (False, 2, path)
    if damage is not damage_other_key:  # a stale key is ordinary, not worth a warning
        assert f"ignoring unreadable client map cache {path}" in caplog.text
    assert_same_map(loaded.client_map, build_client_map(sources))
    assert cache.load_client_map(sources, tmp_path).from_cache


def test_an_unwritable_cache_dir_only_costs_the_caching(
    tmp_path: Path, sources: list[Source], builds: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("x")
    with caplog.at_level(logging.WARNING, logger="router.geo.cache"):
        loaded = cache.load_client_map(sources, tmp_path / "a-file" / "cache")
    assert (loaded.from_cache, loaded.cache_file, len(builds)) == (False, None, 1)
    assert f"client map not cached: cannot write {tmp_path / 'a-file' / 'cache'}" in caplog.text
    assert_same_map(loaded.client_map, build_client_map(sources))


def test_a_failed_write_leaves_nothing_behind(
    tmp_path: Path, sources: list[Source], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.load_client_map(sources, tmp_path)
    before = cache_files(tmp_path)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    changed = sources[:2]
    loaded = cache.load_client_map(changed, tmp_path)
    assert (loaded.from_cache, loaded.cache_file) == (False, None)
    assert cache_files(tmp_path) == before  # no temporary file, and the old cache kept


def test_no_cache_dir_means_no_caching(sources: list[Source], builds: list[int]) -> None:
    assert cache.load_client_map(sources, None).from_cache is False
    assert cache.load_client_map(sources, None).from_cache is False
    assert len(builds) == 2


def test_problems_still_come_from_the_sources(tmp_path: Path, sources: list[Source]) -> None:
    (tmp_path / "overrides.csv").write_text("prefix\n10.0.0.1/8\n", encoding="utf-8")
    with pytest.raises(
        ClientMapError, match=r"overrides.csv:2: prefix: '10.0.0.1/8' has host bits set"
    ):
        cache.load_client_map(sources, tmp_path / "cache")
    with pytest.raises(ClientMapError, match=r"missing.csv: cannot read prefix list"):
        cache.load_client_map([Source("csv", tmp_path / "missing.csv")], tmp_path / "cache")
    assert cache_files(tmp_path / "cache") == []


def test_the_file_is_a_plain_npz(tmp_path: Path, sources: list[Source]) -> None:
    path = cache.load_client_map(sources, tmp_path).cache_file
    assert path is not None
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist())
    assert "meta.npy" in names and "v4_start.npy" in names
    with np.load(path, allow_pickle=False) as npz:  # no object arrays anywhere
        assert all(npz[name].dtype != object for name in npz.files)
