# Conveyor worker image.
#
#   docker build -t conveyor:0.1.0 .
#   docker run --rm -e CONVEYOR_KAFKA__BOOTSTRAP_SERVERS=kafka:9092 \
#     -e CONVEYOR_POSTGRES__DSN=postgresql://... conveyor:0.1.0
#
# Configuration comes only from CONVEYOR_* variables at run time
# (docs/CONFIGURATION.md). The image sets none, so streams/settings.py stays the
# only source of defaults; tests/unit/test_deploy_config.py checks this file.

# The base image by digest, so a rebuild takes the same bytes; `make lock`
# (scripts/base-image) moves it to what the tag names at that time.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# --- build: install Conveyor and its dependencies into a virtualenv -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/conveyor
WORKDIR /src
# .dockerignore admits only pyproject.toml, README.md, the lock files and the packages.
COPY . .
# Every dependency from the hash-pinned lock (scripts/lock), then Conveyor
# itself with no dependency resolution and no unpinned build backend.
RUN /opt/conveyor/bin/pip install --require-hashes -r requirements/runtime.lock \
 && /opt/conveyor/bin/pip install --no-deps --no-build-isolation .

# --- runtime: the virtualenv on a clean base, run as an unprivileged user -------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="conveyor" \
      org.opencontainers.image.description="Kafka consumer that runs the platform's background jobs"
ENV PATH=/opt/conveyor/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric uid/gid, so Kubernetes' runAsNonRoot can verify it (Helm's
# podSecurityContext.runAsUser is the same 10001).
RUN groupadd --system --gid 10001 conveyor \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/conveyor \
      --shell /usr/sbin/nologin conveyor
COPY --from=build /opt/conveyor /opt/conveyor
WORKDIR /home/conveyor
USER 10001:10001
# Fail the build, not the first deploy, if the entry point is broken.
RUN conveyor --version
# SIGTERM starts the drain: in-flight jobs finish (up to
# CONVEYOR_WORKER__DRAIN_TIMEOUT_S), finished offsets are committed, exit 0.
# The worker installs its own handler, so it needs no init as PID 1.
STOPSIGNAL SIGTERM
ENTRYPOINT ["conveyor"]
CMD ["run"]
