"""Node health: the state machine behind withdrawal and draining."""

from router.health.state import ADMIN_STATES, NodeHealth, NodeState, NodeStatus

__all__ = ["ADMIN_STATES", "NodeHealth", "NodeState", "NodeStatus"]
