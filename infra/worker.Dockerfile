# The worker image: CUDA PyTorch and DeepSpeed, for the train, render and housekeeping workers
# (the command picks the queue; see compose.yaml and k8s/). torch is the version pyproject.toml
# pins, from PyTorch's CUDA 12.8 wheel index; the CUDA runtime comes with the wheels, the driver
# from the GPU node. Build from the repository root:
#   docker build -f infra/worker.Dockerfile -t omnipersona-worker .
# For CPU-only hosts (a laptop): --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 OMNI_DATA_DIR=/data VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# Python 3.11 (pyproject.toml requires it) from the deadsnakes PPA; build tools for DeepSpeed's JIT ops.
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
RUN groupadd --system --gid 10001 omni && useradd --system --uid 10001 --gid omni --create-home --home-dir /home/omni omni
WORKDIR /app
COPY pyproject.toml README.md alembic.ini Procfile ./
COPY omnipersona omnipersona
COPY api api
COPY workers workers
COPY migrations migrations
COPY infra infra
COPY examples examples
RUN pip install --no-cache-dir --extra-index-url "$TORCH_INDEX" -e ".[service]" \
    && mkdir -p /data && chown omni:omni /data
USER 10001:10001
# Alive when this host's Celery node answers a broker ping (workers/healthcheck.py).
HEALTHCHECK --interval=60s --timeout=20s --start-period=120s --retries=3 CMD ["python", "-m", "workers.healthcheck"]
CMD ["celery", "-A", "workers.celery_app", "worker", "--queues", "render", "--concurrency", "1", \
     "--hostname", "render@%h", "--loglevel", "INFO"]
