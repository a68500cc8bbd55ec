# rampart in a container: multi-stage, slim, non-root.
#   docker build -t rampart .
#   docker run --rm -v rampart-state:/var/lib/rampart -p 7070:7070 rampart serve --listen 0.0.0.0:7070
# The state directory is a volume: the store, the data planes' saved routes and the
# versions' records survive the container. Build arguments pick cargo features, e.g.
#   docker build --build-arg FEATURES=postgres,kubernetes -t rampart .
FROM rust:1-slim-bookworm AS build
ARG FEATURES=""
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rampart ${FEATURES:+--features "$FEATURES"} \
 && strip target/release/rampart

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/rampart --create-home rampart
COPY --from=build /src/target/release/rampart /usr/local/bin/rampart
USER rampart
WORKDIR /var/lib/rampart
ENV RAMPART_STATE_DIR=/var/lib/rampart
VOLUME ["/var/lib/rampart"]
EXPOSE 7070
ENTRYPOINT ["rampart"]
CMD ["serve", "--listen", "0.0.0.0:7070"]
