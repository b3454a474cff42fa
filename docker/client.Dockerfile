# fedvc client image. Build from the repository root:
#   docker build -f docker/client.Dockerfile -t fedvc-client .
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
COPY client ./client
# torch stays in the requirement list so the resolver keeps the build installed above
RUN pip install ./ ./client torch==2.13.0

# same uid as the server image, so both can read keys written to a shared volume
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/fedvc fedvc \
    && mkdir -p /keys \
    && chown fedvc:fedvc /keys

USER fedvc
WORKDIR /home/fedvc

ENTRYPOINT ["fedvc-client"]
CMD ["--help"]
