"""The bytes routers send each other on the bus, and their checks.

A peer is another router of the same service, not a trusted party: every message is
validated (size, schema, shapes) before anything reads it, and a heartbeat is never taken
from a peer's word: it travels as the node's own signed datagram, which each router
verifies with the node's key itself (``router/health/telemetry.py``).
"""

from __future__ import annotations

import base64
import json
import re
import struct
import time

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.cluster.peers import RouterState

STATE_MAX_BYTES = 1 << 20  # NATS's default max_payload
DEMAND_MAX_BYTES = 1 << 20
REASON_MAX = 120  # characters of a probe's reason carried to the peers
ROUTER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # one subject token: no dots or wildcards
KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")


class MessageError(ValueError):
    """A peer's message that is not what the protocol says; the text says what is wrong."""


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    v: int = Field(ge=1, le=1)
    router_id: str = Field(pattern=ROUTER_ID.pattern)
    config_version: str = Field(max_length=128)
    table_generation: int = Field(ge=0)
    table_digest: str = Field(max_length=64)
    isolated: bool
    probing: bool
    probes_failing: dict[str, str]
    sent_at: float


def encode_state(state: RouterState) -> bytes:
    failing = {node: why[:REASON_MAX] for node, why in state.probes_failing.items()}
    body = {
        "v": 1,
        "router_id": state.router_id,
        "config_version": state.config_version,
        "table_generation": state.table_generation,
        "table_digest": state.table_digest,
        "isolated": state.isolated,
        "probing": state.probing,
        "probes_failing": failing,
        "sent_at": state.sent_at,
    }
    data = json.dumps(body, separators=(",", ":")).encode()
    if len(data) > STATE_MAX_BYTES:
        # Thousands of nodes failing at once: the verdicts still go, their reasons do not fit.
        body["probes_failing"] = dict.fromkeys(failing, "")
        data = json.dumps(body, separators=(",", ":")).encode()
    return data


def decode_state(data: bytes, subject_router: str) -> RouterState:
    if len(data) > STATE_MAX_BYTES:
        raise MessageError(f"state message of {len(data)} bytes (at most {STATE_MAX_BYTES})")
    try:
        m = _State.model_validate_json(data)
    except ValidationError as exc:
        raise MessageError(f"state message: {_first_error(exc)}") from None
    if m.router_id != subject_router:
        raise MessageError(f"state of router {m.router_id!r} sent as {subject_router!r}")
    return RouterState(
        m.router_id, m.config_version, m.table_generation, m.table_digest, m.isolated,
        m.probing, m.probes_failing, m.sent_at,
    )  # fmt: skip


_DEMAND_HEADER = struct.Struct("<I")  # the JSON header's length; then indexes, then rates


def encode_demand(
    router_id: str, config_version: str, epoch: int, qps: np.ndarray, reported_gbps: float = 0.0
) -> bytes:
    """float64[P, G] query rates as the nonzero entries only (most groups of a world are
    quiet at any one router)."""
    flat = qps.ravel()
    where = np.flatnonzero(flat > 0).astype("<u4")
    header = json.dumps(
        {
            "v": 1,
            "router_id": router_id,
            "config_version": config_version,
            "epoch": epoch,
            "shape": list(qps.shape),
            "n": len(where),
            "reported_gbps": reported_gbps,
        },
        separators=(",", ":"),
    ).encode()
    return (
        _DEMAND_HEADER.pack(len(header)) + header + where.tobytes()
        + flat[where].astype("<f4").tobytes()
    )  # fmt: skip


def decode_demand(
    data: bytes, subject_router: str, shape: tuple[int, int]
) -> tuple[str, int, np.ndarray, float]:
    """(config version, epoch, float64[P, G] rates, reported Gbps) of a peer's demand report."""
    if len(data) > DEMAND_MAX_BYTES + 4096 or len(data) < _DEMAND_HEADER.size:
        raise MessageError(f"demand message of {len(data)} bytes")
    (size,) = _DEMAND_HEADER.unpack_from(data)
    try:
        header = json.loads(data[4 : 4 + size])
        router_id, version = header["router_id"], header["config_version"]
        epoch, got_shape, n = int(header["epoch"]), tuple(header["shape"]), int(header["n"])
        reported = float(header.get("reported_gbps", 0.0))
    except (ValueError, KeyError, TypeError) as exc:
        raise MessageError(f"demand message header: {exc!r}") from None
    if router_id != subject_router:
        raise MessageError(f"demand of router {router_id!r} sent as {subject_router!r}")
    if not isinstance(version, str):
        raise MessageError("demand message: config_version is not a string")
    if not (reported >= 0 and np.isfinite(reported)):
        raise MessageError(f"demand message: reported_gbps {reported} is not a load")
    qps = np.zeros(shape)
    if got_shape != shape:
        return version, epoch, qps[:0], reported  # another config's groups: left out
    body = data[4 + size :]
    if n < 0 or len(body) != 8 * n:
        raise MessageError(f"demand message: {len(body)} bytes for {n} entries")
    where = np.frombuffer(body[: 4 * n], dtype="<u4")
    rates = np.frombuffer(body[4 * n :], dtype="<f4").astype(np.float64)
    if n and (where.max() >= qps.size or not np.isfinite(rates).all() or (rates < 0).any()):
        raise MessageError("demand message: an entry out of range, negative or not finite")
    qps.ravel()[where] = rates
    return version, epoch, qps, reported


def encode_admin(state: str, router_id: str) -> bytes:
    return json.dumps({"state": state, "router_id": router_id, "at": time.time()}).encode()


def decode_admin(data: bytes) -> tuple[str, str]:
    """(state, the router it was set through) of an override in the bucket."""
    try:
        body = json.loads(data)
        state, router_id = body["state"], body["router_id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise MessageError(f"override entry: {exc!r}") from None
    if state not in ("up", "down", "drain") or not isinstance(router_id, str):
        raise MessageError(f"override entry: state {state!r} is not up, down or drain")
    return state, router_id[:64]


def admin_key(node_id: str) -> str:
    """The bucket key of a node: its id where NATS allows it, else its base64url form."""
    if KV_KEY.match(node_id) and not node_id.startswith("b64."):
        return node_id
    return "b64." + base64.urlsafe_b64encode(node_id.encode()).decode()


def node_of_key(key: str) -> str:
    if key.startswith("b64."):
        return base64.urlsafe_b64decode(key[4:].encode()).decode()
    return key


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top)"
    return f"{where}: {err['msg']}"
