# rampart in a container: multi-stage, slim, non-root (uid 10001).
#   docker build -t rampart .
#   docker run --rm -v rampart-state:/var/lib/rampart -p 7070:7070 rampart
# The default build has the Kubernetes adapter and the PostgreSQL store: the image is
# what the Helm chart (deploy/helm/rampart) runs. The build argument picks the cargo
# features; an empty one gives the small build (local processes, nginx, HAProxy):
#   docker build --build-arg FEATURES= -t rampart:small .
# The state directory is a volume: the store, the data planes' saved routes and the
# versions' records survive the container. No HEALTHCHECK: it would need a client
# (curl) in the image; Kubernetes probes GET /healthz, and so can any orchestrator.
# CI does not build this image (no container engine there); a test reads this file.
FROM rust:1-slim-bookworm AS build
ARG FEATURES="kubernetes,postgres"
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rampart ${FEATURES:+--features "$FEATURES"} \
 && strip target/release/rampart

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 rampart \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/rampart --create-home rampart
COPY --from=build /src/target/release/rampart /usr/local/bin/rampart
# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/rampart
ENV RAMPART_STATE_DIR=/var/lib/rampart
VOLUME ["/var/lib/rampart"]
EXPOSE 7070
ENTRYPOINT ["/usr/local/bin/rampart"]
CMD ["serve", "--listen", "0.0.0.0:7070"]
