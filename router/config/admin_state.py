"""The optional ``admin_state`` file of a deployment directory, in gdnsd's format.

Operators who ran gdnsd know it: one ``resource => STATE`` per line, ``#`` starts a
comment. Here a resource is a node id and the states are ``UP``, ``DOWN`` and ``DRAIN``
(any case). The running router applies each entry as an admin override of that node
(``router.health.state``), at start and on every reload; a node the file does not name
keeps whatever override the API gave it. Example::

    # maintenance window CHG-1234, until Friday
    tef-mad-2 => DOWN
    meo-lis-1 => DRAIN     # moving its clients off gently
    nos-lis-1 => UP        # clears an override set earlier

gdnsd's per-service entries (``node/service``) and forced-state TTLs (``DOWN/60``) are
not supported: the admin state of a node applies to every policy.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from router.config.problems import Problem

ADMIN_STATE_FILE = "admin_state"
STATES = {"UP": "up", "DOWN": "down", "DRAIN": "drain"}

_LINE = re.compile(r"^\s*(?P<key>\"[^\"]*\"|[^\s=]+)\s*=>\s*(?P<value>\"[^\"]*\"|\S+)\s*$")


def parse_admin_state(
    path: Path, display: str, node_ids: list[str] | None
) -> tuple[dict[str, str], list[Problem]]:
    """node id -> "up" | "down" | "drain"; every problem with its line. ``node_ids``: None skips that check."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [Problem(display, 1, f"cannot read file: {exc}")]
    states: dict[str, str] = {}
    first_line: dict[str, int] = {}
    problems: list[Problem] = []
    known = set(node_ids or ())
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            problems.append(
                Problem(
                    display, number, f"expected NODE => STATE (UP, DOWN or DRAIN), got {line!r}"
                )
            )
            continue
        key, value = match.group("key").strip('"'), match.group("value").strip('"')
        if "/" in key:
            problems.append(Problem(display, number, f'"{key}": per-policy entries (node/policy) are not supported: '
                                                     f'name the node alone ("{key.split("/", 1)[0]} => {value}")'))  # fmt: skip
            continue
        state = STATES.get(value.upper())
        if state is None:
            hint = " (forced-state TTLs such as DOWN/60 are not supported)" if "/" in value else ""
            problems.append(
                Problem(
                    display,
                    number,
                    f'node "{key}": unknown state "{value}" (valid: UP, DOWN, DRAIN){hint}',
                )
            )
        if node_ids is not None and key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            if near:
                valid = f'did you mean "{near[0]}"?'
            else:
                valid = (
                    "nodes: " + ", ".join(sorted(known)[:12]) + (" ..." if len(known) > 12 else "")
                )
            problems.append(
                Problem(display, number, f'unknown node "{key}" (not in nodes.yaml; {valid})')
            )
            continue
        if key in first_line:
            problems.append(
                Problem(
                    display,
                    number,
                    f'node "{key}" is listed twice (first at line {first_line[key]})',
                )
            )
            continue
        first_line[key] = number
        if state is not None:
            states[key] = state
    return states, problems
