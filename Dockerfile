# The iotmon image: every process of the system (`iotmon bridge|ingest|worker|api|...`).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY iotmon iotmon
COPY schemas schemas
COPY producers producers
COPY stream_apps stream_apps
COPY api api
COPY infra infra
RUN pip install --no-cache-dir -e .
USER nobody
ENTRYPOINT []
CMD ["iotmon", "--help"]
