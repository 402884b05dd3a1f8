# The code location's image: the same image serves the gRPC code server, the webserver, the
# daemon and (with the Docker or Kubernetes run launcher) every run worker.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 DAGSTER_HOME=/opt/dagster/home
# Every Dagster process of the image reads it where it stores events (the daemon stores a run's
# planned events, a run worker its materializations): a run's planned events go to the event
# log as one batch, which sftp_minio_assets/defs/instance_storage.py writes in one statement.
# At least the partitions of a run (MAX_PARTITIONS_PER_RUN, 5000 by default).
ENV DAGSTER_EVENT_BATCH_SIZE=5000
WORKDIR /opt/dagster/app

# GnuPG decrypts PGP-encrypted files in flight (sftp_minio_assets/pgp.py).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gnupg openssh-client \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY sftp_minio_assets ./sftp_minio_assets
RUN pip install . \
 && mkdir -p "$DAGSTER_HOME"
COPY workspace.yaml ./
COPY deploy/dagster.queued.yaml "$DAGSTER_HOME/dagster.yaml"

# The code server; webserver and daemon override the command (see docker-compose.yml).
EXPOSE 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", \
     "-m", "sftp_minio_assets.definitions", "--location-name", "sftp_minio_assets"]
