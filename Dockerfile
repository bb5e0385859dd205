# syntax=docker/dockerfile:1
# image-service: `manage.py serve` (gunicorn), configured only by the environment (README, "Configuration").
# Build: docker build -t image-service .   Run: see docker-compose.yml and docs/scaling.md.
# The versions are pinned here and in requirements.txt; the Python is the one the test suite runs on.

ARG PYTHON_VERSION=3.11.7
ARG DEBIAN_RELEASE=bookworm

# --- build: the virtual environment, from pinned wheels (nothing here needs a compiler) -----------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install pip==26.3
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --only-binary=:all: -r /tmp/requirements.txt
# Only what the service runs (.dockerignore lets nothing else in: no .env, data, tests or .git).
COPY . /app
RUN /opt/venv/bin/python -m compileall -q /app  # pip compiled the packages already

# --- runtime: the environment and the code, run by an unprivileged user -------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS runtime
ARG UID=10001
RUN groupadd --system --gid "${UID}" imageservice \
    && useradd --system --uid "${UID}" --gid imageservice --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin imageservice \
    && mkdir /data \
    && chown imageservice:imageservice /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
# DATA_DIR holds Django's own tables, the upload spool, the metrics and (without SECRET_KEY) the
# generated secret key, in both modes: give each instance a volume of its own.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATA_DIR=/data \
    PORT=8000 \
    WEB_WORKERS=2 \
    WEB_THREADS=4
VOLUME ["/data"]
USER imageservice:imageservice
EXPOSE 8000
# /healthz touches nothing, so a MongoDB outage never gets the container restarted (/readyz tells).
# It is asked for as 127.0.0.1, so keep 127.0.0.1 in ALLOWED_HOSTS.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/app/deploy/docker-entrypoint", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/deploy/docker-entrypoint"]
CMD ["serve"]
