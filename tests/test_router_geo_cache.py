"""The compiled client map cache (router/geo/cache.py).

A second load reads the cache instead of the sources; anything that changes the result
(a source's bytes, the sources' order or options) makes a new key and a rebuild; a cache
file that is damaged in any way is ignored and rebuilt; a cache directory that cannot be
written only costs the caching, with a warning. The map comes back as read-only views of
one read-only mapping of the file (what lets every process share its pages).
"""

from __future__ import annotations

import ipaddress
import logging
import mmap
import shutil
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
    assert first.cache_file.name == f"client-map-{cache.cache_key(sources)[:32]}.cmap"
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
    path.write_bytes(b"not a client map cache file at all" * 4)


def damage_flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[cache.ALIGN + 100] ^= 0xFF  # inside the first array: its checksum no longer matches
    path.write_bytes(bytes(data))


def damage_flip_header_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the header's JSON
    path.write_bytes(bytes(data))


def damage_append(path: Path) -> None:
    with path.open("ab") as stream:
        stream.write(b"\0" * 8)


def rewrite(path: Path, drop: str = "", meta: dict | None = None, **replace: np.ndarray) -> None:
    """A well-formed file (checksums right) with other contents: the checks past them."""
    arrays, header = cache.read_arrays(path)
    arrays = {name: np.array(a) for name, a in arrays.items() if name != drop}
    arrays.update(replace)
    header.pop("arrays")
    cache.write_arrays(path, arrays, {**header, **(meta or {})})


def damage_dtype(path: Path) -> None:
    rewrite(path, v4_start=cache.read_arrays(path)[0]["v4_start"].astype(np.float64))


def damage_group_range(path: Path) -> None:
    rewrite(path, v4_group=cache.read_arrays(path)[0]["v4_group"] + 100000)


def damage_lengths(path: Path) -> None:
    rewrite(path, v6_end_lo=cache.read_arrays(path)[0]["v6_end_lo"][:-1])


def damage_missing_array(path: Path) -> None:
    rewrite(path, drop="group_lat")


def damage_other_key(path: Path) -> None:
    rewrite(path, meta={"key": "0" + cache.read_arrays(path)[1]["key"]})


DAMAGES = [damage_truncate, damage_garbage, damage_flip_byte, damage_flip_header_byte,
           damage_append, damage_dtype, damage_group_range, damage_lengths, damage_missing_array,
           damage_other_key]  # fmt: skip


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

    monkeypatch.setattr(cache.os, "fsync", disk_full)
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


def mapping_of(array: np.ndarray) -> object:
    """What owns the array's memory (through views and buffer exports)."""
    base: object = array
    while True:
        if isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        elif isinstance(base, memoryview):
            base = base.obj
        else:
            return base


def is_mapped_read_only(array: np.ndarray) -> bool:
    """A read-only view whose memory is an mmap (the file's pages, not a private copy)."""
    return not array.flags.writeable and isinstance(mapping_of(array), mmap.mmap)


def map_arrays(client_map: ClientMap) -> list[np.ndarray]:
    groups = client_map.groups
    named = [getattr(client_map, f.name) for f in fields(ClientMap) if f.name != "groups"]
    return named + [groups.asn, groups.lat, groups.lon]


@pytest.mark.parametrize("load", ["built", "cached"])
def test_the_arrays_are_read_only_views_of_the_file(
    tmp_path: Path, sources: list[Source], load: str
) -> None:
    first = cache.load_client_map(sources, tmp_path)
    loaded = first if load == "built" else cache.load_client_map(sources, tmp_path)
    assert loaded.from_cache is (load == "cached")
    arrays = map_arrays(loaded.client_map)
    assert all(is_mapped_read_only(a) for a in arrays)
    assert all(a.flags.c_contiguous and a.flags.aligned for a in arrays)
    with pytest.raises(ValueError, match="read-only"):
        loaded.client_map.v4_group[0] = 1  # a write fails instead of copying the page
    # Every array in one mapping of the whole file, at its recorded offset.
    mapping = mapping_of(loaded.client_map.v4_start)
    assert all(mapping_of(a) is mapping for a in arrays)
    assert isinstance(mapping, mmap.mmap) and loaded.cache_file is not None
    assert len(mapping) == loaded.cache_file.stat().st_size


def test_a_truncated_file_is_rebuilt_and_mapped_again(
    tmp_path: Path, sources: list[Source], builds: list[int]
) -> None:
    path = cache.load_client_map(sources, tmp_path).cache_file
    assert path is not None
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size - 1])
    loaded = cache.load_client_map(sources, tmp_path)
    assert (loaded.from_cache, len(builds), path.stat().st_size) == (False, 2, size)
    assert is_mapped_read_only(loaded.client_map.v6_start_hi)


def test_a_map_in_use_survives_its_file_being_replaced(
    tmp_path: Path, sources: list[Source]
) -> None:
    # A reload writes a new file and removes the old one while workers still map it.
    old = cache.load_client_map(sources, tmp_path)
    expected = np.array(old.client_map.v4_start)
    new = cache.load_client_map(sources[:2], tmp_path)
    assert new.cache_file != old.cache_file and old.cache_file is not None
    assert not old.cache_file.exists()
    assert np.array_equal(old.client_map.v4_start, expected)


def test_an_old_npz_cache_is_removed(tmp_path: Path, sources: list[Source]) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    stale = directory / "client-map-0123456789abcdef0123456789abcdef.npz"
    stale.write_bytes(b"PK")
    other = directory / "not-ours.npz"
    other.write_bytes(b"x")
    loaded = cache.load_client_map(sources, directory)
    assert cache_files(directory) == sorted([loaded.cache_file, other])


def test_the_file_holds_no_pickles(tmp_path: Path, sources: list[Source]) -> None:
    path = cache.load_client_map(sources, tmp_path).cache_file
    assert path is not None
    arrays, header = cache.read_arrays(path)
    assert all(a.dtype != object for a in arrays.values())
    assert [entry["name"] for entry in header["arrays"]] == list(arrays)
    assert all(entry["offset"] % cache.ALIGN == 0 for entry in header["arrays"])
