"""The node agent: an edge cache's readers of power, uplinks, load, requests/s and RTT, and
the loop that sends its signed heartbeats to every router (``router node-agent``,
docs/node-agent.md). It uses ``router.health.telemetry``'s encoder, as the simulator does,
and ``router.config.secrets`` for its key file; nothing of the serving runtime."""
