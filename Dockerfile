# syntax=docker/dockerfile:1
# orgctl's image: a static musl binary on `scratch`, run as a non-root user, with its man pages
# and completions. What the final stage holds is laid out by deploy/image/rootfs.sh, the same
# script the empty-root test (tests/image.rs) builds its root with; the binary is built by
# deploy/image/build.sh, as in the release workflow and .ci/run.
#
#   docker build --build-arg ORGCTL_COMMIT=$(git rev-parse --short=12 HEAD) -t orgctl .
#   docker run --rm orgctl --version

# The toolchain: at least Cargo.toml's rust-version; the builds are --locked.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
# The build context has no .git (.dockerignore): the commit --version names comes from here.
ARG ORGCTL_COMMIT=unknown
ENV ORGCTL_COMMIT=${ORGCTL_COMMIT}
# The registry and target caches survive between builds on one builder (BuildKit); the binary
# is copied out in the same step, so nothing in the image depends on them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    bin=$(deploy/image/build.sh) && deploy/image/rootfs.sh /rootfs "$bin"

FROM scratch
ARG ORGCTL_COMMIT=unknown
ARG ORGCTL_VERSION=0.1.0
# The repository's public address (the release workflow passes its own).
ARG ORGCTL_SOURCE=https://github.com/OWNER/orgctl
LABEL org.opencontainers.image.title="orgctl" \
      org.opencontainers.image.description="Operator CLI for the org hierarchy of an agent platform's tenant databases" \
      org.opencontainers.image.source="${ORGCTL_SOURCE}" \
      org.opencontainers.image.version="${ORGCTL_VERSION}" \
      org.opencontainers.image.revision="${ORGCTL_COMMIT}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY --from=build /rootfs/ /
USER 65532:65532
ENV HOME=/home/nonroot
WORKDIR /tmp
ENTRYPOINT ["/usr/local/bin/orgctl"]
CMD ["--help"]
