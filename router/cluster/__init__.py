"""Many routers, one service: node health, demand and overrides shared over NATS JetStream."""
