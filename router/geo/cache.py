"""A compiled client map on disk, so a router starts fast on a world-sized map, and every
process of it (control, workers, a reload's successors) maps the same read-only pages.

``load_client_map(sources, cache_dir)`` returns the map from
``cache_dir/client-map-<key>.cmap`` when that file exists and is sound, else builds it
(``importers.build_client_map``) and writes the file atomically (temporary file, fsync,
rename) for next time, removing older ones (``.npz`` files of the earlier format too). The
key is a SHA-256 over ``FORMAT_VERSION`` and, for every source in order, its kind, options
and the SHA-256 of its bytes: editing any source, reordering them, or changing the merge
rules (bump ``FORMAT_VERSION``) rebuilds.

The file is uncompressed, so its arrays are used where they lie: the whole file is mapped
read-only (``mmap``) and every array of the returned map is a read-only view of that mapping.
The kernel keeps one copy of the pages in its page cache, whichever process maps them; a
forked worker, a reload's successor and a second router on the same host share them, and a
write to a cached array fails instead of copying it. Layout (little-endian)::

    0   8 bytes  MAGIC
    8   uint64   offset of the header (JSON, UTF-8), after the last array
    16  uint64   length of the header
    24  uint32   CRC-32 of bytes [64, header offset): the arrays and their padding
    28  uint32   CRC-32 of the header
    32  ...      zero up to 64
    64  arrays, each at a multiple of 64, in the header's order

The header holds the format, the key, the strings (countries, orgs) and each array's name,
dtype, length and offset. A file that cannot be read or does not hold what it should (wrong
magic, truncated, a checksum that does not match, a missing array, a wrong dtype or length,
a group id out of range) is ignored and rebuilt. If the cache directory cannot be written,
the map is built and used without caching (then in ordinary memory), with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import struct
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from router.geo.clientmap import ClientMap, Groups
from router.geo.importers import Source, build_client_map

FORMAT_VERSION = 2  # bump when the merge rules or this file layout change
PREFIX = "client-map-"
SUFFIX = ".cmap"
OLD_SUFFIXES = (".npz",)  # earlier formats, removed once a new file is written
MAGIC = b"RTRCMAP\x00"
ALIGN = 64  # every array starts at a multiple of this (cache lines; numba's aligned arrays)
_PREAMBLE = struct.Struct("<8sQQII")

log = logging.getLogger("router.geo.cache")

_MAP_ARRAYS = tuple(f.name for f in fields(ClientMap) if f.name != "groups")
_DTYPES = {
    "v4_start": np.int64, "v4_end": np.int64, "v4_group": np.int32, "v4_scope": np.uint8,
    "v6_start_hi": np.uint64, "v6_start_lo": np.uint64, "v6_end_hi": np.uint64, "v6_end_lo": np.uint64,
    "v6_group": np.int32, "v6_scope": np.uint8,
    "group_asn": np.int64, "group_lat": np.float64, "group_lon": np.float64,
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
    path = cache_dir / f"{PREFIX}{key[:32]}{SUFFIX}"
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
    for old in sorted(cache_dir.glob(f"{PREFIX}*")):
        if old != path and old.suffix in (SUFFIX, *OLD_SUFFIXES):
            try:
                old.unlink()
            except OSError:
                pass  # another process's, or already gone: harmless
    log.info("client map built and cached at %s", path)
    # Served from the file just written, as a later start would be: the pages then belong
    # to the page cache, shared with every process that maps the file, not to this one.
    return Loaded(read_cache(path, key) or client_map, False, path)


def write_cache(path: Path, client_map: ClientMap, key: str) -> None:
    """Write atomically: a reader sees the old file, no file, or the whole new one."""
    groups = client_map.groups
    arrays = {name: getattr(client_map, name) for name in _MAP_ARRAYS}
    arrays.update(group_asn=groups.asn, group_lat=groups.lat, group_lon=groups.lon)
    meta = {"format": FORMAT_VERSION, "key": key, "country": groups.country, "org": groups.org}
    write_arrays(path, arrays, meta)


def write_arrays(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """The file layout of the module docstring, with ``meta`` and the array table as its
    header; written to a temporary file beside ``path``, synced, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(bytes(ALIGN))
            offset, crc, table = ALIGN, 0, []
            for name, array in arrays.items():
                data = np.ascontiguousarray(array)
                pad = -offset % ALIGN
                chunk = memoryview(data).cast("B") if data.size else memoryview(b"")
                stream.write(bytes(pad))
                stream.write(chunk)
                crc = zlib.crc32(chunk, zlib.crc32(bytes(pad), crc))
                offset += pad
                table.append({"name": name, "dtype": data.dtype.str, "length": int(data.size),
                              "offset": offset})  # fmt: skip
                offset += data.nbytes
            header = json.dumps({**meta, "arrays": table}).encode("utf-8")
            stream.write(header)
            stream.seek(0)
            stream.write(_PREAMBLE.pack(MAGIC, offset, len(header), crc, zlib.crc32(header)))
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, header) of a file in this module's layout: every array a read-only view of
    one shared, read-only mapping of the file. Raises ValueError saying what is wrong."""
    with path.open("rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        if size < ALIGN:
            raise ValueError(f"{size} bytes: shorter than the {ALIGN}-byte preamble")
        mapped = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    magic, header_at, header_len, crc, header_crc = _PREAMBLE.unpack_from(view)
    if magic != MAGIC:
        raise ValueError(f"not a client map cache file (magic {magic!r})")
    if header_at < ALIGN or header_at + header_len != size:
        raise ValueError(
            f"truncated or padded: header at {header_at}+{header_len}, file {size} bytes"
        )
    header_bytes = view[header_at:size]
    if zlib.crc32(header_bytes) != header_crc:
        raise ValueError("header checksum does not match")
    header = json.loads(bytes(header_bytes).decode("utf-8"))
    if zlib.crc32(view[ALIGN:header_at]) != crc:
        raise ValueError("array checksum does not match")
    arrays: dict[str, np.ndarray] = {}
    for entry in header["arrays"]:
        dtype, length, offset = np.dtype(entry["dtype"]), int(entry["length"]), int(entry["offset"])
        if offset % ALIGN or offset < ALIGN or offset + length * dtype.itemsize > header_at:
            raise ValueError(f"{entry['name']}: bad offset {offset} or length {length}")
        arrays[entry["name"]] = np.frombuffer(mapped, dtype=dtype, count=length, offset=offset)
    return arrays, header


def read_cache(path: Path, key: str) -> ClientMap | None:
    """The cached map, or None when the file is missing, stale or unsound."""
    try:
        arrays, meta = read_arrays(path)
        if meta.get("format") != FORMAT_VERSION or meta.get("key") != key:
            return None
        client_map = _assemble(arrays, meta)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        log.warning("ignoring unreadable client map cache %s: %s", path, exc)
        return None
    return client_map


def _assemble(arrays: dict[str, np.ndarray], meta: dict) -> ClientMap:
    """Check every array (dtype, shape, group ids in range) before trusting it."""
    for name, dtype in _DTYPES.items():
        if name not in arrays:
            raise KeyError(f"no array {name}")
        if arrays[name].dtype != dtype or arrays[name].ndim != 1:
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
    # The arrays as they are (views of the mapping): a copy here would undo the sharing.
    return ClientMap(groups=groups, **{name: arrays[name] for name in _MAP_ARRAYS})


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
