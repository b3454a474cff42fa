# fedvc coordinator image. Build from the repository root:
#   docker build -f docker/server.Dockerfile -t fedvc-server .
FROM python:3.11-slim

# torch comes first and pinned, from the CPU wheel index, so that nothing installed later
# pulls in a CUDA build. Override the index with --build-arg TORCH_INDEX_URL=... if needed.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY fedvc ./fedvc
COPY server ./server
# torch stays in the requirement list so the resolver keeps the build installed above
RUN pip install ./ ./server torch==2.13.0

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/fedvc fedvc \
    && mkdir -p /config /data /keys \
    && chown fedvc:fedvc /data /keys
COPY docker/server.toml /config/server.toml

USER fedvc
WORKDIR /home/fedvc
VOLUME ["/data"]
# gRPC, Prometheus metrics
EXPOSE 50051 9100

# Healthy once the gRPC port accepts connections (works with and without TLS).
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=12 \
    CMD ["python", "-c", "import socket; socket.create_connection(('127.0.0.1', 50051), timeout=2).close()"]

ENTRYPOINT ["fedvc-server"]
CMD ["--config", "/config/server.toml"]
