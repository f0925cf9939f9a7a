# tensorgate: CPU or GPU (CUDA 13 / cuDNN 9 as pip wheels; the host provides the driver).
#   docker build -t tensorgate .
#   docker build --build-arg EXTRAS=cuda,mlflow -t tensorgate .   # also serve from MLflow
#   docker run --rm --gpus all -p 8000:8000 -v "$PWD/models:/models:ro" tensorgate
FROM python:3.11-slim-bookworm AS build
ARG EXTRAS=cuda
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tensorgate
COPY pyproject.toml README.md /src/
COPY gateway /src/gateway
COPY routing /src/routing
COPY runtimes /src/runtimes
RUN /opt/tensorgate/bin/pip install "/src[${EXTRAS}]"

FROM python:3.11-slim-bookworm
# The NVIDIA container toolkit mounts the driver when these are set (and --gpus is given).
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PATH=/opt/tensorgate/bin:$PATH \
    TENSORGATE_HOST=0.0.0.0 \
    TENSORGATE_PORT=8000 \
    TENSORGATE_REPOSITORY=/models \
    TENSORGATE_STATE_DIR=/var/lib/tensorgate/state \
    TENSORGATE_LOG_DIR=/var/lib/tensorgate/predictions \
    TENSORGATE_REGISTRY_CACHE_DIR=/var/lib/tensorgate/cache \
    MLFLOW_DISABLE_TELEMETRY=true
RUN useradd --system --uid 10001 --home-dir /var/lib/tensorgate --create-home tensorgate
COPY --from=build /opt/tensorgate /opt/tensorgate
USER tensorgate
WORKDIR /var/lib/tensorgate
VOLUME ["/models", "/var/lib/tensorgate"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['TENSORGATE_PORT']}/v2/health/ready\", timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tensorgate", "serve"]
