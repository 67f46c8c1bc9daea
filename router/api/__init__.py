"""HTTP API: node state and operator overrides."""
