# One image for every LifeOps Mesh agent: `lifeops-mesh run <agent>` picks which.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto \
    && rm -rf /var/lib/apt/lists/*

# The agents run as this user (uid 10001), never as root; /data is theirs (0700) for SQLite
# files (compose mounts volumes there; a fresh named volume takes this owner and mode).
RUN useradd --uid 10001 --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin lifeops \
    && mkdir -p /data && chown 10001:10001 /data && chmod 0700 /data

WORKDIR /app
# The dependencies first, in their own layer: a code change does not download them again.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY README.md topics.toml ./
COPY broker ./broker
COPY mesh ./mesh
COPY lifeops_contract ./lifeops_contract
COPY lifeops_oura ./lifeops_oura
COPY stats_agent ./stats_agent
COPY lifeops_agent ./lifeops_agent
COPY ha_bridge ./ha_bridge
COPY lifeops_mesh ./lifeops_mesh
# A regular install (not editable): the contract and broker files are copied into the package.
RUN pip install --no-cache-dir --no-deps . && rm -rf /app/build

ENV LIFEOPS_METRICS_BIND=0.0.0.0 LIFEOPS_DATA_DIR=/data
USER 10001:10001
ENTRYPOINT ["lifeops-mesh"]
CMD ["--help"]
