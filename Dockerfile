# The router image: `router serve` (the default command), `router simulate-nodes`,
# `router anycast-announce` under ExaBGP, and `loadtest`. See docs/operations.md.
FROM python:3.11-slim-bookworm

# iproute2: the entrypoint of docker-compose.yml puts the anycast service address on lo.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY router ./router
COPY loadtest ./loadtest
RUN pip install --no-cache-dir ".[loadtest]" "exabgp>=5.0"

# The sample deployment; mount your own over /app/zones (and its geodata beside it).
COPY zones ./zones
COPY geodata ./geodata

# numba compiles the fast path once and caches it here (keep it on a volume to start faster).
ENV NUMBA_CACHE_DIR=/var/cache/router/numba
RUN mkdir -p /var/cache/router/numba /var/lib/router

# DNS (UDP and TCP), the HTTP API (/status, /metrics), node heartbeats (UDP).
EXPOSE 53/udp 53/tcp 8053/tcp 5300/udp
ENTRYPOINT ["router"]
CMD ["serve", "--zones", "/app/zones", "--listen", "0.0.0.0:53", "--api", "0.0.0.0:8053", \
     "--telemetry", "0.0.0.0:5300", "--state-file", "/var/lib/router/node-state.json"]
