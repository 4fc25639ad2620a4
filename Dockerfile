# Two images from one file:
#   docker build -t REGISTRY/vipwire:0.1.0 .                      production (the default)
#   docker build --target allinone -t vipwire-allinone:0.1.0 .    `vipwire up`, with nats-server
# The production image has no nats-server: NATS runs as its own pods
# (deploy/kustomize/fleet/nats.yaml). The name and registry the manifests use are
# set in one place: deploy/kustomize/images/kustomization.yaml.

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY libs libs
COPY services services
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim AS base
# iproute2 and nftables: the node agent (VIPs on lo, standalone-mode DNAT).
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 nftables \
    && rm -rf /var/lib/apt/lists/*
# The state directory (compose's emulator writes its kubeconfig there) exists and
# belongs to the image user, so a named volume mounted on it starts owned by 10001.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/vipwire --no-create-home \
        vipwire \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/vipwire
WORKDIR /var/lib/vipwire
ENTRYPOINT ["vipwire"]

FROM base AS allinone
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir "$(ls /wheels/vipwire-*.whl)[allinone]"
USER 10001:10001

FROM base AS production
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir /wheels/vipwire-*.whl
USER 10001:10001
