"""Operator files: zones, node inventory, policies; validated with file:line problems."""

from router.config.deployment import Deployment, load_deployment
from router.config.problems import ConfigError, Problem

__all__ = ["ConfigError", "Deployment", "Problem", "load_deployment"]
