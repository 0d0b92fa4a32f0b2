# One image with both binaries: /minimesh-proxy (the sidecar) and /minimesh
# (injector, control plane and CLI). Static, non-root, no shell. The image
# sets no entrypoint: the injected sidecar and the chart name the binary in
# their command.
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t minimesh .
#
# The target init is the init container's image of iptables interception
# (minimesh-init, docs/interception.md): /minimesh-proxy with Debian's
# iptables, which `minimesh-proxy init` runs, kept out of the sidecar's
# static image. The injector's default for it is the image's repository
# + -init, same tag (docs/install.md):
#
#   docker build --build-arg VERSION=... --target init -t minimesh-init .

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath \
        -ldflags "-s -w -X github.com/minimesh/minimesh/wellknown.Version=${VERSION}" \
        -o /out/minimesh-proxy ./proxy/cmd/minimesh-proxy && \
    CGO_ENABLED=0 go build -trimpath \
        -ldflags "-s -w -X github.com/minimesh/minimesh/wellknown.Version=${VERSION}" \
        -o /out/minimesh ./injector/cmd/minimesh

FROM debian:bookworm-slim AS init
RUN apt-get update && \
    apt-get install -y --no-install-recommends iptables && \
    rm -rf /var/lib/apt/lists/*
COPY --from=build /out/minimesh-proxy /minimesh-proxy
ENTRYPOINT ["/minimesh-proxy", "init"]

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/minimesh-proxy /minimesh-proxy
COPY --from=build /out/minimesh /minimesh
USER 65532:65532
CMD ["/minimesh-proxy", "run"]
