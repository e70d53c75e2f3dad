# The orchestrator's image, for operators with Docker and a registry. Build from the
# repository root and push where the cluster pulls from:
#
#   docker build -f image/orchestrator.Dockerfile -t REGISTRY/jbazel-orchestrator:TAG .
#   docker push REGISTRY/jbazel-orchestrator:TAG
#
# then name it in your overlay (`images:` newName/newTag, as deploy/overlays/local does).
# Machines without Docker or a registry use image/build-orchestrator.sh, which packs the same
# content (the binary, the libraries it loads, CA certificates, a nonroot user 65532) and
# imports it into the local cluster's containerd.

# protox compiles the protos (no protoc needed); aws-lc-sys needs only a C compiler.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p orchestrator \
 && strip --strip-unneeded -o /orchestrator target/release/orchestrator

# glibc, libgcc_s, CA certificates, /etc/passwd with nonroot (65532), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /orchestrator /usr/local/bin/orchestrator
USER 65532:65532
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/orchestrator"]
