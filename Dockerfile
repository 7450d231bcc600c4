# The iotmon image: every process of the system (`iotmon bridge|ingest|worker|api|...`).
# Tag it with the version in pyproject.toml, which infra/k8s refers to:
#   docker build -t iotmon:<version> .   (infra/k8s/README.md, Install)
# The base image is pinned to a Python patch release (bump it deliberately).
FROM python:3.11.15-slim-trixie

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric user: Kubernetes checks runAsNonRoot against it, and infra/k8s sets the
# same runAsUser/runAsGroup.  Its home is /tmp, the one writable directory of the pods
# (read-only root file system with an emptyDir on /tmp).
RUN groupadd --system --gid 10001 iotmon \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin iotmon

WORKDIR /app
COPY pyproject.toml README.md ./
COPY iotmon iotmon
COPY schemas schemas
COPY producers producers
COPY stream_apps stream_apps
COPY api api
COPY infra infra
# Editable on purpose: `iotmon migrate` and `iotmon stack` read infra/ next to the packages
# (iotmon/db/migrate.py, iotmon/stack), which a regular install into site-packages would not
# carry.  The sources are byte-compiled here, as root, because the pods cannot write them.
RUN pip install --no-cache-dir -e . \
    && python -m compileall -q iotmon schemas producers stream_apps api
# The processes only read the byte code compiled above.
ENV PYTHONDONTWRITEBYTECODE=1

USER 10001:10001

# No HEALTHCHECK: one image runs every process (bridge, ingest, worker, sink, api, and one-shot
# jobs), each with its own health signal; docker-compose.yml and infra/k8s declare the check
# per process (the API's /health and /ready, the stages' /metrics ports).
# checkov:skip=CKV_DOCKER_2:One image for several processes, each checked by its orchestrator
ENTRYPOINT []
CMD ["iotmon", "--help"]
