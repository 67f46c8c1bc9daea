"""The steering core: numba kernels, the compiled model, and routing tables."""

from router.steering.build import RoutingTable, build_routing_table
from router.steering.model import SteeringModel, compile_model

__all__ = ["RoutingTable", "SteeringModel", "build_routing_table", "compile_model"]
