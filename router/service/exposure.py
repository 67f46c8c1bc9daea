"""What may be served off loopback: nothing guarded by a secret that anyone can read.

The published sample node keys (router/config/secrets.py) and a placeholder API token are fine
for a lab on 127.0.0.1, and an open door anywhere else: with them, telemetry and the API bind
to loopback only, and the router says why when asked for more.
"""

from __future__ import annotations

import ipaddress

from router.config.secrets import MIN_TOKEN_CHARS, is_placeholder_token
from router.service.sockets import ServiceError, format_endpoint


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (a wildcard or a name is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_api_token(api: tuple[str, int], token: str) -> None:
    """Refuse a placeholder token on an API bound off loopback."""
    if is_loopback(api[0]) or not is_placeholder_token(token):
        return
    raise ServiceError(
        f"--api {format_endpoint(*api)} is off loopback, and the API token is a placeholder "
        f"(a known example value, or under {MIN_TOKEN_CHARS} characters): anyone could change "
        "node states. Generate one (head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > FILE; "
        "chmod 600 FILE) and pass --api-token-file FILE, or bind --api to 127.0.0.1"
    )
