# tensorgate: two images from one Dockerfile (docs/operations.md, "Docker").
#   docker build -t tensorgate .                                  # CUDA 13 / cuDNN 9 as pip wheels (the host provides the driver)
#   docker build --build-arg EXTRAS= -t tensorgate:cpu .          # CPU only: ONNX Runtime's CPU build, no CUDA libraries
#   docker build --build-arg EXTRAS=cuda,mlflow -t tensorgate .   # also serve from MLflow (EXTRAS=mlflow: CPU only)
#   docker run --rm --gpus all -p 8000:8000 -v "$PWD/models:/models:ro" tensorgate
FROM python:3.11-slim-bookworm AS build
ARG EXTRAS=cuda
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tensorgate
COPY pyproject.toml README.md /src/
COPY gateway /src/gateway
COPY routing /src/routing
COPY runtimes /src/runtimes
COPY deploy/docker/install /src/install
RUN /src/install /opt/tensorgate /src "${EXTRAS}"

FROM python:3.11-slim-bookworm
# Only what is not a setting is set here: every server setting lives in the image's
# tensorgate.toml (TENSORGATE_CONFIG), so a Kubernetes ConfigMap mounted over /etc/tensorgate,
# or a TENSORGATE_<NAME> variable, takes effect as documented. (A TENSORGATE_STATE_DIR here
# would override any config file's state_dir.)
# The NVIDIA container toolkit mounts the driver when these are set (and --gpus is given).
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PATH=/opt/tensorgate/bin:$PATH \
    TENSORGATE_CONFIG=/etc/tensorgate/tensorgate.toml \
    MLFLOW_DISABLE_TELEMETRY=true
# /data holds everything the server writes (state, prediction log, registry cache); it is the
# user's home too, so nothing writes to the (possibly read-only) root file system.
RUN useradd --system --uid 10001 --home-dir /data --create-home tensorgate
COPY deploy/docker/tensorgate.toml /etc/tensorgate/tensorgate.toml
COPY --from=build /opt/tensorgate /opt/tensorgate
USER tensorgate
WORKDIR /data
VOLUME ["/models", "/data"]
EXPOSE 8000 8001
# Asks the port the server listens on, however it was configured (file, variable).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; from gateway.settings import load_settings; urllib.request.urlopen(f'http://127.0.0.1:{load_settings().port}/v2/health/ready', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tensorgate", "serve"]
