"""A compiled client map on disk, so a router starts fast on a world-sized map.

``load_client_map(sources, cache_dir)`` returns the map from
``cache_dir/client-map-<key>.npz`` when that file exists and is sound, else builds it
(``importers.build_client_map``) and writes the file atomically (temporary file, fsync,
rename) for next time, removing older ones. The key is a SHA-256 over ``FORMAT_VERSION``
and, for every source in order, its kind, options and the SHA-256 of its bytes: editing
any source, reordering them, or changing the merge rules (bump ``FORMAT_VERSION``)
rebuilds. The file is a plain ``.npz`` (no pickle): the ClientMap arrays, the group
columns, and the strings (countries, orgs) and key as UTF-8 JSON in a byte array. A file
that cannot be read or does not hold what it should is ignored and rebuilt. If the cache
directory cannot be written, the map is built and used without caching, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from router.geo.clientmap import ClientMap, Groups
from router.geo.importers import Source, build_client_map

FORMAT_VERSION = 1  # bump when the merge rules or this file layout change
PREFIX = "client-map-"

log = logging.getLogger("router.geo.cache")

_MAP_ARRAYS = tuple(f.name for f in fields(ClientMap) if f.name != "groups")
_DTYPES = {
    "v4_start": np.int64, "v4_end": np.int64, "v4_group": np.int32, "v4_scope": np.uint8,
    "v6_start_hi": np.uint64, "v6_start_lo": np.uint64, "v6_end_hi": np.uint64, "v6_end_lo": np.uint64,
    "v6_group": np.int32, "v6_scope": np.uint8,
    "group_asn": np.int64, "group_lat": np.float64, "group_lon": np.float64, "meta": np.uint8,
}  # fmt: skip


@dataclass(frozen=True)
class Loaded:
    client_map: ClientMap
    from_cache: bool
    cache_file: Path | None  # where the map is cached; None when it could not be written


def cache_key(sources: Sequence[Source]) -> str:
    """SHA-256 (hex) of the format version and every source's kind, options and bytes."""
    described = [
        {"kind": s.kind, "asn": s.asn, "country": s.country, "sha256": _file_digest(s.path)}
        for s in sources
    ]
    text = json.dumps({"format": FORMAT_VERSION, "sources": described}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def load_client_map(sources: Sequence[Source], cache_dir: Path | None) -> Loaded:
    """The client map of ``sources``, from the cache when it matches; raises ClientMapError."""
    try:
        key = cache_key(sources) if cache_dir is not None else None
    except OSError:
        key = None  # a source cannot be read: building reports it, naming the file
    if cache_dir is None or key is None:
        return Loaded(build_client_map(sources), False, None)
    path = cache_dir / f"{PREFIX}{key[:32]}.npz"
    cached = read_cache(path, key)
    if cached is not None:
        log.info("client map from cache %s", path)
        return Loaded(cached, True, path)
    client_map = build_client_map(sources)
    try:
        write_cache(path, client_map, key)
    except OSError as exc:
        log.warning("client map not cached: cannot write %s: %s", path, exc)
        return Loaded(client_map, False, None)
    for old in cache_dir.glob(f"{PREFIX}*.npz"):
        if old != path:
            try:
                old.unlink()
            except OSError:
                pass  # another process's, or already gone: harmless
    log.info("client map built and cached at %s", path)
    return Loaded(client_map, False, path)


def write_cache(path: Path, client_map: ClientMap, key: str) -> None:
    """Write atomically: a reader sees the old file, no file, or the whole new one."""
    groups = client_map.groups
    meta = json.dumps(
        {"format": FORMAT_VERSION, "key": key, "country": groups.country, "org": groups.org}
    )
    arrays = {name: getattr(client_map, name) for name in _MAP_ARRAYS}
    arrays.update(
        group_asn=groups.asn, group_lat=groups.lat, group_lon=groups.lon,
        meta=np.frombuffer(meta.encode("utf-8"), dtype=np.uint8),
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            np.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_cache(path: Path, key: str) -> ClientMap | None:
    """The cached map, or None when the file is missing, stale or unsound."""
    try:
        # Open the file here: np.load leaks its own handle when the content is not an npz.
        with path.open("rb") as stream, np.load(stream, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in _DTYPES}
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
        if meta.get("format") != FORMAT_VERSION or meta.get("key") != key:
            return None
        client_map = _assemble(arrays, meta)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("ignoring unreadable client map cache %s: %s", path, exc)
        return None
    return client_map


def _assemble(arrays: dict[str, np.ndarray], meta: dict) -> ClientMap:
    """Check every array (dtype, shape, group ids in range) before trusting it."""
    for name, dtype in _DTYPES.items():
        if name in arrays and (arrays[name].dtype != dtype or arrays[name].ndim != 1):
            raise ValueError(f"{name}: expected 1-d {np.dtype(dtype)}")
    country, org = tuple(meta["country"]), tuple(meta["org"])
    n_groups = len(country)
    if (
        not all(len(arrays[name]) == n_groups for name in ("group_asn", "group_lat", "group_lon"))
        or len(org) != n_groups
    ):
        raise ValueError("group columns differ in length")
    for prefix, names in (("v4_", ("start", "end", "group", "scope")),
                          ("v6_", ("start_hi", "start_lo", "end_hi", "end_lo", "group", "scope"))):  # fmt: skip
        if len({len(arrays[prefix + n]) for n in names}) != 1:
            raise ValueError(f"{prefix} arrays differ in length")
        group = arrays[prefix + "group"]
        if group.size and (group.min() < 0 or group.max() >= n_groups):
            raise ValueError(f"{prefix}group out of range")
    groups = Groups(
        asn=arrays["group_asn"],
        country=country,
        lat=arrays["group_lat"],
        lon=arrays["group_lon"],
        org=org,
    )
    return ClientMap(
        groups=groups, **{name: np.ascontiguousarray(arrays[name]) for name in _MAP_ARRAYS}
    )


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
