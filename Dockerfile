# The knative-operator image: the operator binary (and the `knative` CLI,
# whose `sample-app` subcommand is the project's sample app).
#
#   docker build -t knative-operator:dev .
#   kind load docker-image knative-operator:dev      # or: k3d image import knative-operator:dev
#
# See "Run the operator on Kubernetes" in the README.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p knative-kube-adapter --bin knative-operator \
 && cargo build --release --locked --bin knative

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/knative-operator /src/target/release/knative /usr/local/bin/
# Not root: the operator needs no privileges in its pod.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/knative-operator"]
