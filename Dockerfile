# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target api    -t visionjobs-api .     # FastAPI only: no torch, no CUDA
#   docker build --target worker -t visionjobs-worker .  # torch (CUDA build) + the `ml` extra
# docker-compose.yml builds both. Both install from requirements/lock.txt, the lock the test
# suite runs against (tests/deploy/test_lock.py and test_worker_env.py check it).

# Python 3.11: the version the lock was made on (its markers were evaluated for it).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- base: build the project wheel once; both targets install it -----------------------
FROM ${PYTHON_IMAGE} AS base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY worker ./worker
COPY models ./models
COPY visionjobs ./visionjobs
# --no-deps: only our code goes in the wheel; each target resolves its own dependencies.
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- api: the HTTP edge, small and quick to start ---------------------------------------
FROM ${PYTHON_IMAGE} AS api
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VISIONJOBS_DATA_DIR=/data
COPY --from=base /wheels /wheels
COPY requirements/lock.txt /tmp/lock.txt
# Core dependencies only (no extras): the service never imports torch.
RUN pip install -c /tmp/lock.txt /wheels/*.whl && rm -rf /wheels /tmp/lock.txt
# /data exists and is owned by the user, so a named volume mounted there is writable.
RUN useradd --system --uid 10001 --create-home visionjobs \
    && mkdir -p /data && chown visionjobs:visionjobs /data
USER visionjobs
WORKDIR /home/visionjobs
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["visionjobs", "api", "--host", "0.0.0.0", "--port", "8000"]

# ---- worker: the GPU processes (compose gives it the host's GPUs) -------------------------
# torch at the locked version, first: PyPI's Linux wheel of it is the CUDA build and brings
# its CUDA runtime (nvidia-* wheels, pinned by torch itself); the host needs only the NVIDIA
# driver and container toolkit. Development installs the CPU wheel of the same version.
FROM ${PYTHON_IMAGE} AS worker
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VISIONJOBS_MODEL_DIR=/models \
    HF_HOME=/models/huggingface
COPY --from=base /wheels /wheels
COPY requirements/lock.txt /tmp/lock.txt
RUN pip install -c /tmp/lock.txt "torch==$(sed -n 's/^torch==//p' /tmp/lock.txt)" \
    && pip install -c /tmp/lock.txt "$(ls /wheels/*.whl)[ml]" \
    && rm -rf /wheels /tmp/lock.txt
RUN useradd --system --uid 10001 --create-home visionjobs \
    && mkdir -p /models && chown visionjobs:visionjobs /models
USER visionjobs
WORKDIR /home/visionjobs
VOLUME ["/models"]
# Healthy = a `worker.process` child is alive (the launcher restarts dead ones) and the
# broker answers. Not `celery inspect ping`: the solo pool answers control messages only
# between tasks, so every job longer than the retries would flag the worker unhealthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, redis; me = str(os.getpid()); cmd = lambda p: open(f'/proc/{p}/cmdline', 'rb').read() if os.path.exists(f'/proc/{p}/cmdline') else b''; assert any(b'\\0worker.process\\0' in cmd(p) for p in os.listdir('/proc') if p.isdigit() and p != me), 'no worker process'; url = os.environ.get('VISIONJOBS_REDIS_URL'); url and redis.Redis.from_url(url, socket_timeout=5).ping()"]
CMD ["visionjobs", "worker"]
