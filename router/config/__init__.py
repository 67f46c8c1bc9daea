"""Operator files: zones, node inventory, policies; validated with file:line problems.

``load_yaml``, ``LocatedYaml`` and ``validate_item`` are public so that other operator
files (the load-test scenarios) are read and reported the same way.
"""

from router.config._validate import validate_item
from router.config._yaml import LocatedYaml, load_yaml
from router.config.deployment import Deployment, load_deployment
from router.config.problems import ConfigError, Problem

__all__ = [
    "ConfigError",
    "Deployment",
    "LocatedYaml",
    "Problem",
    "load_deployment",
    "load_yaml",
    "validate_item",
]
