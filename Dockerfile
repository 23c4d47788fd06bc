# connector-relay's image. Three stages:
#   prebuilt  CI: a binary built on the host (cargo build) copied onto the Debian base image,
#             so the image builds without a Rust image or a registry:
#               cp target/debug/connector-relay lab/bin/ && docker build --target prebuilt \
#                 --build-arg BASE_IMAGE=connector-relay-lab/debian:bookworm -t ... .
#             (it comes first: the classic builder builds every stage before its target).
#   builder   a user's build: the public Rust image compiles the release binary.
#   (last)    the default target: the builder's binary on debian:bookworm-slim.
# Both runtime stages are the same: glibc binary, no shell needed by the relay itself
# (the lab's compose file uses the base image's bash to wait for its certificates).
ARG BASE_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1-bookworm

FROM ${BASE_IMAGE} AS prebuilt
LABEL org.opencontainers.image.title="connector-relay" connector-relay-lab=relay
# The classic builder (no BuildKit) builds this stage for every target, also where no binary
# was put in lab/bin/: the wildcard (next to a file that always exists) lets it pass then.
COPY Cargo.toml lab/bin/connector-relay* /tmp/prebuilt/
RUN if [ -f /tmp/prebuilt/connector-relay ]; then \
      install -m 0755 /tmp/prebuilt/connector-relay /usr/local/bin/connector-relay; fi \
 && rm -rf /tmp/prebuilt
WORKDIR /var/lib/connector-relay
EXPOSE 25 8025
ENTRYPOINT ["/usr/local/bin/connector-relay"]
CMD ["run", "--config", "/etc/connector-relay/relay.toml"]

FROM ${RUST_IMAGE} AS builder
# No .git in the image: `--version` names the revision given here (build.rs), e.g.
# --build-arg GIT_REV=$(git rev-parse --short=12 HEAD).
ARG GIT_REV=unknown
ENV CONNECTOR_RELAY_GIT_REV=${GIT_REV}
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY bench bench
COPY src src
# No debug info in the image (the release profile keeps line tables for the benchmark).
ENV CARGO_PROFILE_RELEASE_DEBUG=0
RUN cargo build --release --locked --bin connector-relay

FROM ${BASE_IMAGE} AS relay
LABEL org.opencontainers.image.title="connector-relay"
COPY --from=builder /src/target/release/connector-relay /usr/local/bin/connector-relay
WORKDIR /var/lib/connector-relay
EXPOSE 25 8025
ENTRYPOINT ["/usr/local/bin/connector-relay"]
CMD ["run", "--config", "/etc/connector-relay/relay.toml"]
