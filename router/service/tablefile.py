"""Routing tables shared between processes without copies: a file mapped read-only.

The supervisor writes each generation to a new file in a private directory (on tmpfs
where there is one) and tells the workers its path; each worker maps it and wraps the
arrays with ``np.frombuffer``, so every worker reads the same physical pages. Unlinking
an old file is safe while a worker still maps it: Linux keeps mapped pages alive.

Layout: ``MAGIC``, a little-endian u64 header length, a JSON header (generation, and
name/dtype/shape/offset of each array), then the arrays at 64-byte aligned offsets.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path

import numpy as np

from router.dns.dnssec import TableSignatures
from router.steering.build import RoutingTable

MAGIC = b"RTABLE3\n"
_ALIGN = 64
_ARRAYS = (
    "group_set",
    "set_nodes",
    "node_state",
    "split_start",
    "split_set",
    "split_cum",
    "node_planned",
    "policy_pool",
)
# The RRSIGs of the steered answers (router/dns/dnssec.py), beside the table they sign.
_SIGNATURE_ARRAYS = {"sig_slot": "slot", "sig_off": "off", "sig_data": "data", "sig_count": "count"}


def write_table(
    directory: Path, table: RoutingTable, signatures: TableSignatures | None = None
) -> Path:
    arrays = {name: np.ascontiguousarray(getattr(table, name)) for name in _ARRAYS}
    if signatures is not None:
        for name, attribute in _SIGNATURE_ARRAYS.items():
            arrays[name] = np.ascontiguousarray(getattr(signatures, attribute))
    entries = []
    offset = 0
    for name, array in arrays.items():
        entries.append(
            {"name": name, "dtype": array.dtype.str, "shape": list(array.shape), "offset": offset}
        )
        offset += -(-array.nbytes // _ALIGN) * _ALIGN
    header = json.dumps({"generation": table.generation, "arrays": entries}).encode()
    prefix = MAGIC + struct.pack("<Q", len(header)) + header
    data_start = -(-len(prefix) // _ALIGN) * _ALIGN
    path = directory / f"table-{table.generation}.bin"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        handle.write(prefix.ljust(data_start, b"\0"))
        for entry, array in zip(entries, arrays.values()):
            handle.seek(data_start + entry["offset"])
            # The array's own buffer: tobytes() copied each (megabytes at world scale) first.
            handle.write(memoryview(array.reshape(-1).view(np.uint8)))
    os.replace(tmp, path)
    return path


def map_table(path: Path) -> RoutingTable:
    return map_signed_table(path)[0]


def map_signed_table(path: Path) -> tuple[RoutingTable, TableSignatures]:
    """The table and its signatures (empty ones if the file has none)."""
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if mapped[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{path} is not a routing table file")
    (header_len,) = struct.unpack_from("<Q", mapped, len(MAGIC))
    start = len(MAGIC) + 8
    header = json.loads(mapped[start : start + header_len])
    data_start = -(-(start + header_len) // _ALIGN) * _ALIGN
    arrays = {}
    for entry in header["arrays"]:
        dtype = np.dtype(entry["dtype"])
        count = int(np.prod(entry["shape"])) if entry["shape"] else 1
        if count == 0:  # an empty array may sit at the very end of the file: nothing to map
            empty = np.zeros(entry["shape"], dtype=dtype)
            # Read-only like every mapped array: the compiled UDP loop is typed on it, and a
            # writable one would make each worker compile its own loop at the first query.
            empty.flags.writeable = False
            arrays[entry["name"]] = empty
            continue
        array = np.frombuffer(mapped, dtype=dtype, count=count, offset=data_start + entry["offset"])
        arrays[entry["name"]] = array.reshape(entry["shape"])
    signatures = TableSignatures.empty()
    if "sig_slot" in arrays:
        signatures = TableSignatures(**{a: arrays.pop(n) for n, a in _SIGNATURE_ARRAYS.items()})
    return RoutingTable(generation=header["generation"], **arrays), signatures
