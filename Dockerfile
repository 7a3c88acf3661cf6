# One image for every LifeOps Mesh agent: `lifeops-mesh run <agent>` picks which.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md topics.toml ./
COPY broker ./broker
COPY mesh ./mesh
COPY lifeops_contract ./lifeops_contract
COPY lifeops_oura ./lifeops_oura
COPY stats_agent ./stats_agent
COPY lifeops_agent ./lifeops_agent
COPY ha_bridge ./ha_bridge
COPY lifeops_mesh ./lifeops_mesh
# A regular install (not editable): the contract and broker files are copied into the package.
RUN pip install --no-cache-dir . && rm -rf /app/build

ENV LIFEOPS_METRICS_BIND=0.0.0.0
ENTRYPOINT ["lifeops-mesh"]
CMD ["--help"]
