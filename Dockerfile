# twinroute container image.
#
#   docker build -t ghcr.io/twinroute/twinroute:0.1.0 .
#
# The runtime image is distroless (glibc, CA certificates, no shell, uid 65532). twinroute writes
# nothing but stdout/stderr; Pingora's pid file and upgrade socket go to $TMPDIR (/tmp), so run it
# with a read-only root filesystem and an emptyDir (or tmpfs) at /tmp, as k8s/ and helm/ do.

# ---- build ------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
# Pingora's zlib-ng (libz-ng-sys) is built with cmake.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependencies first, against placeholder sources, so that editing src/ reuses this layer.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin twinroute \
    && rm -rf src

# The real sources (conf/ is compiled in: `twinroute demo` embeds conf/demo.yaml).
COPY src ./src
COPY conf ./conf
# COPY keeps the files' own mtimes, which may be older than the placeholder build: touch the
# crate roots so cargo rebuilds the twinroute crates (not the dependencies).
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin twinroute \
    && cp target/release/twinroute /twinroute

# ---- runtime ----------------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="twinroute" \
      org.opencontainers.image.description="LLM-API failover egress proxy built on Pingora" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/twinroute/twinroute"
COPY --from=builder /twinroute /usr/local/bin/twinroute
COPY conf/twinroute.yaml /etc/twinroute/twinroute.yaml
# distroless :nonroot already runs as 65532:65532; stated again so that runtimes that check
# runAsNonRoot against a numeric USER accept it.
USER 65532:65532
ENV TMPDIR=/tmp
# 4000: data plane (OpenAI/Anthropic-style API), 9464: admin (/healthz /readyz /status /metrics).
# 8443 is used only by `twinroute inject-webhook` (TLS) and is not exposed by default.
EXPOSE 4000 9464
ENTRYPOINT ["/usr/local/bin/twinroute"]
CMD ["run", "--config", "/etc/twinroute/twinroute.yaml"]
