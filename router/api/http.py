"""The HTTP API: node state and operator overrides.

- ``GET /v1/status``: ``serving`` or ``draining`` (anycast must withdraw now); ``PUT`` it
  with ``{"state": "draining"|"serving"}`` and the token to drain for maintenance.
- ``GET /v1/telemetry``: heartbeats accepted, and rejected by reason.
- ``GET /v1/nodes``: every node with its state, the reason, the override in force, where it
  is and the load it last reported.
- ``GET /v1/decisions``: every steered name's policy (settings included) and every client
  group's answers (node ids, split shares) in the routing table in service, keyed so that
  another config can be compared (``router/api/decisions.py``; read by ``router plan``), a
  page of groups at a time (``limit``, ``cursor``), filtered by ``name``, ``group``, ``node``.
- ``GET /v1/demand``: the demand the plan uses, per policy and client group (Gbps), and
  whether it was observed or is the configured prior, a page of groups at a time (``limit``,
  ``cursor``; one demand snapshot per walk), filtered by ``name``, ``group``.
- ``GET /v1/changes``: the latest changes of node state (up to 200), newest first.
- ``GET /v1/cluster``: with ``--bus``, this router's id, whether it is isolated (cut off the
  bus), its config version, table generation and digest, and every peer's (last seen, live,
  agrees); ``agree`` is false while a live peer serves another config or table.
- ``GET /metrics``: Prometheus text format (``router/api/metrics.py``).
- ``GET /status``: the status page (``router/api/static/status.html``): the nodes on a map,
  coloured by state, their load against capacity and the recent changes; it refreshes itself.
- ``PUT /v1/nodes/{id}/admin-state`` with ``{"state": "up"|"down"|"drain"}`` and
  ``Authorization: Bearer <token>``: returns once every DNS worker serves the change.
- ``GET /v1/config``: the config in service (version, its files' hashes, when loaded), the
  reload counts, the last attempt and the last error (every problem as path:line: message).
- ``POST /v1/config/reload`` with the token: reload now; the answer is the attempt.

Everything about the deployment (nodes, sites, policies) is read from the config in
service at each request: a reload may change it.

Input is checked before anything acts on it (``docs/api.md#errors``): the token first on
the endpoints that need one (401, whatever the body), then the query parameters, then the
body (pydantic models: strict types, unknown fields rejected), at most ``BODY_MAX`` bytes
(413). Every error, aiohttp's own (404, 405, 413) included, is JSON ``{"error": ...}``; an
unexpected exception is logged and answered 500 JSON, never an HTML page.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.api import decisions, metrics
from router.health.state import NodeStatus
from router.service.loaded import LoadedConfig
from router.service.sockets import format_endpoint
from router.service.supervisor import Supervisor

log = logging.getLogger("router.api")
STATIC = Path(__file__).resolve().parent / "static"
BODY_MAX = 64 * 1024  # bytes; a larger request body is 413
# What a JSON body may be sent as: JSON, and what curl -d and urllib send by default.
BODY_TYPES = ("application/json", "application/x-www-form-urlencoded", "text/plain")


# -- what the endpoints accept -----------------------------------------------------------


class _Body(BaseModel):
    """A request body: a JSON object with exactly these fields, of exactly these types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AdminStateBody(_Body):
    state: Literal["up", "down", "drain"]


class ServiceStateBody(_Body):
    state: Literal["serving", "draining"]


class ReloadBody(_Body):
    """``POST /v1/config/reload`` takes no field: an empty body or ``{}``."""


class _Query(BaseModel):
    """Query parameters (strings, converted): only these, each at most once."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoQuery(_Query):
    pass


class StatusPageQuery(_Query):
    refresh: float | None = Field(None, gt=0, allow_inf_nan=False)  # read by the page's script


class DemandQuery(_Query):
    """``GET /v1/demand``; ``GET /v1/decisions`` takes the same and ``node``."""

    name: str | None = Field(None, min_length=1, max_length=300)
    group: str | None = Field(None, min_length=1, max_length=300)
    limit: int = Field(decisions.PAGE_DEFAULT, ge=1, le=decisions.PAGE_MAX)
    cursor: str | None = Field(None, min_length=1, max_length=300)


class DecisionsQuery(DemandQuery):
    node: str | None = Field(None, min_length=1, max_length=300)


QUERIES: dict[str, type[_Query]] = {
    "/status": StatusPageQuery,
    "/v1/decisions": DecisionsQuery,
    "/v1/demand": DemandQuery,
}
QUERY = web.RequestKey("query", _Query)  # the parsed query parameters of a request


class BadRequest(Exception):
    """400 (or ``status``): ``message`` says what was wrong; ``problems`` per field."""

    def __init__(self, message: str, problems: list[dict] | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems
        self.status = status

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.message}
        if self.problems is not None:
            body["problems"] = self.problems
        return web.json_response(body, status=self.status)


def _shown(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _problems(exc: ValidationError, what: str, fields: list[str]) -> list[dict]:
    """One ``{"field", "problem"}`` per error; ``what``: "field" or "parameter"."""
    out = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "(whole body)"
        if error["type"] == "extra_forbidden":
            known = ", ".join(f'"{f}"' for f in fields) or "none"
            problem = f"unknown {what} (known: {known})"
        elif error["type"] == "missing":
            problem = f"required {what} missing"
        else:
            problem = f"{error['msg']}, got {_shown(error['input'])}"
        out.append({"field": field, "problem": problem})
    return out


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f'field "{key}" given twice')
        out[key] = value
    return out


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


async def read_body(
    request: web.Request, model: type[_Body], example: str, empty_ok: bool = False
) -> _Body:
    """The request's JSON body as ``model``; BadRequest (400, 413) saying what is wrong."""
    if request.content_length is not None and request.content_length > BODY_MAX:
        raise BadRequest(
            f"body too large: {request.content_length} bytes, at most {BODY_MAX}", status=413
        )
    given_type = request.headers.get("Content-Type")
    if given_type is not None:
        media = request.content_type.lower()
        if not (
            media in BODY_TYPES or (media.startswith("application/") and media.endswith("+json"))
        ):
            raise BadRequest(
                f"Content-Type {given_type!r}: the body must be JSON (send Content-Type: application/json)"
            )
        charset = request.charset
        if charset is not None and charset.lower().replace("-", "") != "utf8":
            raise BadRequest(f"Content-Type {given_type!r}: the body must be UTF-8")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise BadRequest(f"body too large: more than {BODY_MAX} bytes", status=413) from exc
    if not raw.strip():
        if empty_ok:
            return model()
        raise BadRequest(f"body: empty; send a JSON object like {example}")
    try:
        body = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except ValueError as exc:  # json.JSONDecodeError included
        raise BadRequest(f"body: not JSON ({exc}); send a JSON object like {example}") from exc
    if not isinstance(body, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(body), "a number"
        )
        raise BadRequest(f"body: must be a JSON object like {example}, got {kind}")
    return _validated(model, body, "body", "field")


def read_query(request: web.Request, model: type[_Query]) -> _Query:
    given: dict[str, str] = {}
    for key, value in request.query.items():
        if key in given:
            raise BadRequest(
                f'query: parameter "{key}" given more than once',
                [{"field": key, "problem": "given more than once"}],
            )
        given[key] = value
    return _validated(model, given, "query", "parameter")


def _validated(model: type[BaseModel], data: dict, where: str, kind: str) -> BaseModel:
    """``data`` as ``model``; BadRequest naming each ``kind`` (field, parameter) that is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc, kind, list(model.model_fields))
        text = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
        raise BadRequest(f"{where}: {text}", problems) from exc


def create_app(
    supervisor: Supervisor, token: str, reload: Callable[[str], Awaitable[dict]] | None = None
) -> web.Application:
    """``reload``: runs one reload (the server's, so reloads never overlap); without it the
    supervisor's own, in a thread."""
    if not token:
        raise ValueError("the API needs a non-empty token")
    expected = f"Bearer {token}".encode()
    # The endpoints that change something: the token is checked before anything else.
    needs_token = {
        ("PUT", "/v1/status"),
        ("PUT", "/v1/nodes/{node_id}/admin-state"),
        ("POST", "/v1/config/reload"),
    }

    @web.middleware
    async def checked(request: web.Request, handler: Callable) -> web.StreamResponse:
        """Token, then query parameters; every error as JSON, never a bare 500."""
        try:
            match = request.match_info
            if match.http_exception is None:  # a route matched (else: 404/405 below)
                canonical = match.route.resource.canonical if match.route.resource else ""
                if (request.method, canonical) in needs_token and not authorized(request):
                    return unauthorized(request)
                request[QUERY] = read_query(request, QUERIES.get(canonical, NoQuery))
            return await handler(request)
        except BadRequest as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects
            headers = {
                k: v
                for k, v in exc.headers.items()
                if k.lower() not in ("content-type", "content-length")
            }
            text = exc.text or exc.reason
            return web.json_response({"error": text}, status=exc.status, headers=headers)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("%s %s from %s failed", request.method, request.path, request.remote)
            return web.json_response({"error": "internal error (the router logged it)"}, status=500)

    app = web.Application(client_max_size=BODY_MAX, middlewares=[checked])

    def authorized(request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(given, expected)

    def unauthorized(request: web.Request) -> web.Response:
        log.warning(
            "rejected %s %s from %s: bad or missing token",
            request.method,
            request.path,
            request.remote,
        )
        return web.json_response(
            {"error": "missing or wrong bearer token"},
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    def node_json(config: LoadedConfig, status: NodeStatus) -> dict[str, object]:
        """One node; ``status`` from one ``health.status()`` call per request (it covers all)."""
        sites, nodes_by_id = config.sites_by_id, config.nodes_by_id
        node_id = status.node_id
        node = nodes_by_id[node_id]
        i = config.node_index[node_id]
        load = config.health.monitor.load_gbps[i] if config.health.monitor is not None else None
        return {
            "id": node.id,
            "state": status.state.label,
            "reason": status.reason,
            "admin_state": status.admin_state,
            "since": status.since,
            "site": node.site,
            "metro": sites[node.site].metro if node.site in sites else None,
            "lat": node.lat,
            "lon": node.lon,
            # What the node last reported carrying (None: no heartbeat telemetry).
            "load_gbps": None if load is None or math.isnan(load) else float(load),
            "asn": node.asn,
            "ipv4": str(node.ipv4),
            "ipv6": str(node.ipv6),
            "capacity_gbps": node.capacity_gbps,
            "anycast_prefixes": [str(p) for p in node.anycast_prefixes],
            # Policies with their own probe: whether this node is in them, and why.
            "policies": {
                compiled.name: vars(config.policy_probes.result(p, node_id))
                for p, compiled in enumerate(config.model.policies)
                if compiled.policy.probe is not None and compiled.in_pool[i]
            },
        }

    async def list_nodes(request: web.Request) -> web.Response:
        config = supervisor.config
        nodes = [node_json(config, status) for status in config.health.status()]
        return web.json_response({"generation": supervisor.table.generation, "nodes": nodes})

    async def put_admin_state(request: web.Request) -> web.Response:
        body = await read_body(request, AdminStateBody, '{"state": "down"}')
        state = body.state
        node_id = request.match_info["node_id"]
        if node_id not in supervisor.health:
            return web.json_response({"error": f'unknown node "{node_id}"'}, status=404)
        # Waits until every worker serves the change; off the event loop, which keeps
        # taking heartbeats meanwhile.
        try:
            status = await asyncio.to_thread(supervisor.set_admin_state, node_id, state)
        except KeyError:  # a reload removed the node meanwhile
            return web.json_response({"error": f'unknown node "{node_id}"'}, status=404)
        log.info("node %s admin state set to %s by %s", node_id, state, request.remote)
        return web.json_response(
            {**node_json(supervisor.config, status), "generation": supervisor.table.generation}
        )

    async def service_status(request: web.Request) -> web.Response:
        return web.json_response(
            {"state": supervisor.service_state, "generation": supervisor.table.generation,
             "dns": format_endpoint(supervisor.host, supervisor.port),
             "listeners": [format_endpoint(h, p) for h, p in supervisor.listeners],
             "zones": [str(z) for z in supervisor.deployment.zones]}
        )  # fmt: skip

    async def cluster_status(request: web.Request) -> web.Response:
        link = supervisor.cluster
        if link is None:
            config, table = supervisor.in_service()
            return web.json_response(
                {"router_id": None, "isolated": False, "bus": None, "agree": True,
                 "config_version": config.version, "table_generation": table.generation,
                 "table_digest": None, "live_peers": 0, "disagreeing_peers": 0, "peers": [],
                 "note": "a router on its own: serve with --bus and --router-id to share a service"}
            )  # fmt: skip
        return web.json_response(link.status())

    async def put_service_state(request: web.Request) -> web.Response:
        body = await read_body(request, ServiceStateBody, '{"state": "draining"}')
        state = body.state
        supervisor.service_state = state
        log.info("service state set to %s by %s", state, request.remote)
        return await service_status(request)

    async def telemetry_counters(request: web.Request) -> web.Response:
        verifier = supervisor.verifier
        if verifier is None:
            return web.json_response({"enabled": False})
        return web.json_response(
            {
                "enabled": True,
                "accepted": verifier.accepted,
                "rejected": verifier.rejected,
                "node_reboots": verifier.reboots,
            }
        )

    async def dns_counters(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(supervisor.dns_counters))

    async def recent_changes(request: web.Request) -> web.Response:
        changes = [
            {
                "time": c.time,
                "node": c.node_id,
                "from": c.before.label,
                "to": c.after.label,
                "reason": c.reason,
            }
            for c in supervisor.health.recent_changes()
        ]
        return web.json_response({"changes": changes})

    async def config_json(request: web.Request) -> web.Response:
        config, table = supervisor.in_service()
        log_ = supervisor.reloader.log
        return web.json_response({
            "version": config.version,
            "directory": str(config.deployment.directory),
            "loaded_at": config.loaded_at,
            "files": config.files.public_hashes,
            "zones": [str(z) for z in config.deployment.zones],
            "nodes": len(config.model.node_ids),
            "policies": [{"zone": str(c.zone), "name": c.name} for c in config.model.policies],
            "generation": table.generation,
            "reloads": {"ok": log_.ok, "failed": log_.failed, "unchanged": log_.unchanged},
            "last_attempt": log_.last_attempt,
            "last_error": log_.last_error,
        })  # fmt: skip

    async def post_reload(request: web.Request) -> web.Response:
        await read_body(request, ReloadBody, "{}", empty_ok=True)
        log.info("reload requested by %s", request.remote)
        if reload is not None:
            attempt = await reload("api")
        else:
            attempt = await asyncio.to_thread(supervisor.reload, "api")
        return web.json_response(attempt, status=422 if attempt["result"] == "failed" else 200)

    async def status_page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "status.html", headers={"Cache-Control": "no-cache"})

    async def country_outlines(request: web.Request) -> web.FileResponse:
        return web.FileResponse(
            STATIC / "countries-110m.json", headers={"Cache-Control": "max-age=86400"}
        )

    decision_pages = decisions.DecisionPages()
    demand_pages = decisions.DemandPages()

    async def a_page(
        request: web.Request, pages: decisions.DecisionPages | decisions.DemandPages
    ) -> web.Response:
        try:
            page = await asyncio.to_thread(pages.page, supervisor, **request[QUERY].model_dump())
        except decisions.PageError as exc:
            return web.json_response({"error": exc.message}, status=exc.status)
        return web.json_response(page)

    async def current_decisions(request: web.Request) -> web.Response:
        return await a_page(request, decision_pages)

    async def current_demand(request: web.Request) -> web.Response:
        return await a_page(request, demand_pages)

    registry = metrics.registry_for(supervisor)

    async def prometheus_metrics(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.render, registry)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    app.router.add_get("/metrics", prometheus_metrics)

    async def to_status_page(request: web.Request) -> web.Response:
        raise web.HTTPFound("/status")

    app.router.add_get("/", to_status_page)
    app.router.add_get("/status", status_page)
    app.router.add_get("/static/countries-110m.json", country_outlines)
    app.router.add_get("/v1/changes", recent_changes)
    app.router.add_get("/v1/cluster", cluster_status)
    app.router.add_get("/v1/config", config_json)
    app.router.add_post("/v1/config/reload", post_reload)
    app.router.add_get("/v1/decisions", current_decisions)
    app.router.add_get("/v1/demand", current_demand)
    app.router.add_get("/v1/dns", dns_counters)
    app.router.add_get("/v1/telemetry", telemetry_counters)
    app.router.add_get("/v1/status", service_status)
    app.router.add_put("/v1/status", put_service_state)
    app.router.add_get("/v1/nodes", list_nodes)
    app.router.add_put("/v1/nodes/{node_id}/admin-state", put_admin_state)
    return app
