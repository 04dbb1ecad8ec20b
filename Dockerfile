# The storagegrant-controller image: a static musl build of the binary on distroless.
#
# NOTE: no container engine runs in this repository's CI, so this Dockerfile is neither built
# nor tested there.
#
#   docker build -t ghcr.io/storagegrant/storagegrant-controller:v0.1.0 .
#
# The builder compiles for the architecture it runs on (uname -m), so that a multi-platform
# `docker buildx build --platform linux/amd64,linux/arm64` builds a binary for each image.

FROM rust:1-bookworm AS builder
# ring, under rustls, compiles C code, so the musl target needs musl-gcc.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# CC is set for the musl target only, so build scripts compiled for the host keep the
# host's compiler.
RUN arch="$(uname -m)" \
    && target="${arch}-unknown-linux-musl" \
    && rustup target add "$target" \
    && env "CC_${arch}_unknown_linux_musl=musl-gcc" \
        cargo build --release --locked -p storagegrant-controller --target "$target" \
    && cp "target/$target/release/storagegrant-controller" /storagegrant-controller

# static-debian12 holds CA certificates and an /etc/passwd with the user nonroot (65532), but
# no libc, which the statically linked musl binary does not need.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /storagegrant-controller /storagegrant-controller
# The nonroot user by number, so that the kubelet can verify runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["/storagegrant-controller"]
CMD ["run"]
