# syntax=docker/dockerfile:1
#
# One image for every ordersync role. The first argument picks the role:
#   docker run IMAGE web | worker | beat | migrate
# See docs/deployment.md for how it is built and run.

# --- build: resolve dependencies from the hashed lock into a self-contained venv ---
FROM python:3.12-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# The lock alone first, so this (slow) layer is reused until a dependency changes.
# --require-hashes makes pip refuse anything that is not byte-for-byte what was locked;
# --only-binary keeps compilers out of the image and the build reproducible.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps --only-binary=:all: -r requirements.lock

# The project itself: --no-deps, because everything it needs came from the lock above.
COPY pyproject.toml README.md ./
# The runtime layers only: the development rig (devrig/), tests and benchmarks stay out.
COPY cli/ cli/
COPY service/ service/
COPY workers/ workers/
COPY data/ data/
COPY integrations/ integrations/
COPY ordersync/ ordersync/
COPY domain/ domain/
COPY migrations/ migrations/
RUN pip install --no-deps . \
    && pip check

# --- runtime: no build tools, no pip cache, no source tree ---
FROM python:3.12-slim-bookworm AS runtime

# tini runs as PID 1: the kernel gives PID 1 no default signal handlers, so without it
# SIGTERM from the kubelet could be ignored and Celery/uvicorn would never start their
# graceful shutdown. tini also reaps the zombies Celery's prefork pool can leave behind.
# Override TINI_VERSION if Debian publishes a different build for your architecture.
ARG TINI_VERSION=0.19.0-1+b3
RUN apt-get update \
    && apt-get install -y --no-install-recommends "tini=${TINI_VERSION}" \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ordersync \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin ordersync

COPY --from=build /opt/venv /opt/venv

# HOME=/tmp: the root filesystem is read-only in Kubernetes and /tmp is the one writable
# mount (an emptyDir), so anything that insists on a home directory lands there.
# Bytecode was compiled at install time; never try to write it at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    LOG_FORMAT=json

LABEL org.opencontainers.image.title="ordersync" \
      org.opencontainers.image.description="Keeps a web shop's orders in step with Klarna and Adyen" \
      org.opencontainers.image.licenses="Apache-2.0"

WORKDIR /app

# Numeric IDs so the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001

EXPOSE 8000

# No -g: signalling the whole process group would hit Celery's pool children directly
# and kill in-flight PSP calls instead of letting the parent do a warm shutdown.
ENTRYPOINT ["/usr/bin/tini", "--", "ordersync"]
CMD ["web"]
