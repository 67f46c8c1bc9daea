"""The HTTP API: node state and operator overrides.

- ``GET /v1/status``: ``serving`` or ``draining`` (anycast must withdraw now); ``PUT`` it
  with ``{"state": "draining"|"serving"}`` and the token to drain for maintenance.
- ``GET /v1/telemetry``: heartbeats accepted, and rejected by reason.
- ``GET /v1/nodes``: every node with its state, the reason, the override in force, where it
  is and the load it last reported.
- ``GET /v1/decisions``: every steered name's policy (settings included) and every client
  group's answers (node ids, split shares) in the routing table in service, keyed so that
  another config can be compared (``router/api/decisions.py``; read by ``router plan``).
- ``GET /v1/demand``: the demand the plan uses, per policy and client group (Gbps), and
  whether it was observed or is the configured prior.
- ``GET /v1/changes``: the latest changes of node state (up to 200), newest first.
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
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from router.api import decisions, metrics
from router.health.state import ADMIN_STATES, NodeStatus
from router.service.loaded import LoadedConfig
from router.service.supervisor import Supervisor

log = logging.getLogger("router.api")
STATIC = Path(__file__).resolve().parent / "static"


def create_app(
    supervisor: Supervisor, token: str, reload: Callable[[str], Awaitable[dict]] | None = None
) -> web.Application:
    """``reload``: runs one reload (the server's, so reloads never overlap); without it the
    supervisor's own, in a thread."""
    if not token:
        raise ValueError("the API needs a non-empty token")
    app = web.Application()
    expected = f"Bearer {token}".encode()

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
        if not authorized(request):
            return unauthorized(request)
        node_id = request.match_info["node_id"]
        if node_id not in supervisor.health:
            return web.json_response({"error": f'unknown node "{node_id}"'}, status=404)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response(
                {"error": 'body must be JSON like {"state": "down"}'}, status=400
            )
        state = body.get("state") if isinstance(body, dict) else None
        if state not in ADMIN_STATES:
            valid = ", ".join(f'"{s}"' for s in ADMIN_STATES)
            return web.json_response(
                {"error": f"state must be one of {valid}, got {state!r}"}, status=400
            )
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
             "dns": f"{supervisor.host}:{supervisor.port}", "zones": [str(z) for z in supervisor.deployment.zones]}
        )  # fmt: skip

    async def put_service_state(request: web.Request) -> web.Response:
        if not authorized(request):
            return unauthorized(request)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response(
                {"error": 'body must be JSON like {"state": "draining"}'}, status=400
            )
        state = body.get("state") if isinstance(body, dict) else None
        if state not in ("serving", "draining"):
            return web.json_response(
                {"error": f'state must be "serving" or "draining", got {state!r}'}, status=400
            )
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
            }  # fmt: skip
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
        if not authorized(request):
            return unauthorized(request)
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

    async def current_decisions(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(decisions.running_decisions, supervisor))

    async def current_demand(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(decisions.running_demand, supervisor))

    registry = metrics.registry_for(supervisor)

    async def prometheus_metrics(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.render, registry)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    app.router.add_get("/metrics", prometheus_metrics)
    app.router.add_get("/", lambda request: web.HTTPFound("/status"))
    app.router.add_get("/status", status_page)
    app.router.add_get("/static/countries-110m.json", country_outlines)
    app.router.add_get("/v1/changes", recent_changes)
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
