"""What may be served off loopback: nothing guarded by a secret that anyone can read.

A deployment still on the published sample node keys (router/config/secrets.py), or an API
token that is a placeholder, is a lab: its API and telemetry bind to loopback only, and the
router says why when asked for more. A reload onto the sample keys is refused the same way
(router/service/loaded.py).
"""

from __future__ import annotations

import ipaddress

from router.config.secrets import MIN_TOKEN_CHARS, is_placeholder_token
from router.service.sockets import ServiceError, format_endpoint

Endpoint = tuple[str, int]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (a wildcard or a name is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def off_loopback(api: Endpoint | None, telemetry: Endpoint | None) -> list[str]:
    """The control-plane listeners asked for off loopback, as ``--flag HOST:PORT``."""
    asked = [("--api", api), ("--telemetry", telemetry)]
    return [f"{flag} {format_endpoint(*ep)}" for flag, ep in asked if ep and not is_loopback(ep[0])]


def bus_servers_off_loopback(servers: tuple[str, ...]) -> list[str]:
    """The ``--bus`` URLs (``nats://HOST:PORT``) whose host is not loopback: an open NATS there
    lets whoever reaches it set overrides, so the CLI asks for credentials."""
    hosts = [(url, url.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")) for url in servers]
    return [url for url, host in hosts if not is_loopback(host)]


def check_exposure(
    api: Endpoint | None, telemetry: Endpoint | None, token: str | None, sample_keys: bool
) -> None:
    """Refuse lab secrets on listeners off loopback, naming the listener and the fix."""
    exposed = off_loopback(api, telemetry)
    if not exposed:
        return
    reasons = []
    if sample_keys:
        reasons.append(
            "the node keys include the published sample keys (zones/node-keys.sample.yaml), "
            "which anyone can read: generate real ones (router keys generate --zones DIR "
            "--out FILE) and point health.keys or --keys at them"
        )
    if token is not None and is_placeholder_token(token):
        reasons.append(
            f"the API token is a placeholder (a known example value, or under {MIN_TOKEN_CHARS} "
            "characters): generate one (head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' "
            "> FILE; chmod 600 FILE) and pass --api-token-file FILE"
        )
    if reasons:
        raise ServiceError(
            f"{' and '.join(exposed)} would be off loopback, but "
            + "; and ".join(reasons)
            + ". Anyone could change node states. Fix that, or bind them to 127.0.0.1"
        )
