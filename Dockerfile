FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 nftables \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY libs libs
COPY services services
RUN pip install --no-cache-dir . && useradd -r -u 10001 vipwire
USER 10001
ENTRYPOINT ["vipwire"]
