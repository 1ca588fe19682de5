# dsrflow's production image: the wheel and its dependencies (with the PostgreSQL driver),
# none of the demo (no examples/, no moto or Faker) and no test tools. One image, several
# roles (docker-compose.yaml): the OpenDSR callback endpoint by default, a Prefect worker
# or the Prefect server with another entrypoint. No secret is baked in: they come from the
# environment or Prefect Secret blocks at run time (README, "Running it in production").
#
#   docker build -t dsrflow:0.1.0 .

# -- build: the wheel, from the checkout (pip wheel builds it as `python -m build` would) --
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dsrflow ./dsrflow
COPY connectors ./connectors
COPY pipeline ./pipeline
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
COPY entrypoints ./entrypoints
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# -- run ----------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm

# Prefect: no usage reports from a privacy product; its home on the image's volume.
# DSRFLOW_ROOT: where the installed flows/ and tasks/ are, for the deployments' pull step.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    PREFECT_HOME=/var/lib/dsrflow/prefect \
    DSRFLOW_ROOT=/usr/local/lib/python3.11/site-packages \
    DSRFLOW_CONFIG=/etc/dsrflow/dsrflow.yaml

# A fixed uid, so the volumes' ownership is the same on every host. The folders exist in
# the image owned by it: a new named volume mounted on one copies that ownership.
RUN groupadd --system --gid 10001 dsrflow \
    && useradd --system --uid 10001 --gid dsrflow --home-dir /var/lib/dsrflow \
       --shell /usr/sbin/nologin dsrflow \
    && mkdir -p /var/lib/dsrflow/certificates /var/lib/dsrflow/exports \
       /var/lib/dsrflow/state /var/lib/dsrflow/prefect /etc/dsrflow \
    && chown -R dsrflow:dsrflow /var/lib/dsrflow \
    && chmod 0700 /var/lib/dsrflow/certificates /var/lib/dsrflow/exports \
       /var/lib/dsrflow/state /var/lib/dsrflow/prefect

COPY --from=build /dist /tmp/dist
# The wheel with the `postgres` extra only (psycopg for the ledger); dependencies from
# the index as pyproject.toml bounds them.
RUN pip install --no-cache-dir "$(ls /tmp/dist/dsrflow-*.whl)[postgres]" \
    && rm -rf /tmp/dist

# Numeric: Kubernetes (runAsNonRoot) and hosts without this user name can check it.
USER 10001:10001
WORKDIR /var/lib/dsrflow

# The OpenDSR callback endpoint (`dsrflow serve --callbacks-only`); the Prefect server's
# 4200 is published by its own service in docker-compose.yaml.
EXPOSE 8787
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8787/health', timeout=4)"]

ENTRYPOINT ["dsrflow"]
CMD ["serve", "--callbacks-only", "--host", "0.0.0.0", "--port", "8787"]
