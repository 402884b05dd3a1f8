"""Dagster resources: thin, typed adapters over sftp.py, s3.py and transfer_log.py.

Each opens its connections on first use and keeps them for the run (or sensor tick),
so that a batch of files shares SSH sessions, S3 connections and database connections.
"""

import os
import posixpath
from typing import Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from .s3 import ObjectStore, S3Settings
from .sftp import FileFilter, Listing, SFTPConnector, SFTPPool, SFTPSettings, list_tree
from .transfer import MIB, Tuning
from .transfer_log import TransferLog
from .worker import Retry, SourcePolicy


class SFTPResource(dg.ConfigurableResource):
    """One SFTP source: where it is, how to trust and log in to it, which files to take."""

    host: str
    port: int = 22
    username: str
    password: str | None = Field(default=None, description="Password, or the key's passphrase.")
    private_key: str | None = Field(default=None, description="Key file path or PEM text.")
    known_hosts_path: str | None = None
    host_key_sha256: str | None = Field(default=None, description='Pinned "SHA256:..." key.')
    allow_unknown_host: bool = Field(
        default=False, description="Accept any host key (logged). Never in production."
    )
    root: str = "/"
    follow_symlinks: bool = Field(
        default=False, description="Follow links whose target is inside root; else skip them."
    )
    include: list[str] = Field(default_factory=list, description="Globs on the relative path.")
    exclude: list[str] = Field(default_factory=list)
    min_file_age_seconds: int = Field(
        default=60, description="Files modified more recently are left for a later tick."
    )
    # What to do with the files: where they go, how, and what becomes of the original.
    destination_prefix: str | None = Field(
        default=None, description="Key prefix under MINIO_PREFIX; default: the source's name."
    )
    max_workers: int | None = Field(
        default=None, description="Files copied at once per run; default: MAX_WORKERS."
    )
    compression: Literal["none", "gzip", "zstd"] = Field(
        default="none", description="Compress in flight; the object key gets .gz or .zst."
    )
    after_copy: Literal["keep", "delete", "move"] = Field(
        default="keep", description="What becomes of the remote file once its copy is verified."
    )
    archive_dir: str | None = Field(
        default=None, description="Where after_copy: move puts files, outside root."
    )

    _pool: SFTPPool | None = PrivateAttr(default=None)

    def settings(self) -> SFTPSettings:
        return SFTPSettings(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            private_key=self.private_key,
            known_hosts_path=self.known_hosts_path,
            host_key_sha256=self.host_key_sha256,
            allow_unknown_host=self.allow_unknown_host,
            root=self.root,
        )

    @property
    def file_filter(self) -> FileFilter:
        return FileFilter(tuple(self.include), tuple(self.exclude))

    @property
    def pool(self) -> SFTPPool:
        if self._pool is None:
            self._pool = SFTPPool(SFTPConnector(self.settings()))
        return self._pool

    def policy_error(self) -> str | None:
        """What is wrong with the after-copy settings together, if anything."""
        if self.after_copy != "move":
            return None
        if not self.archive_dir:
            return "after_copy: move needs archive_dir (ARCHIVE_DIR)"
        root, archive = posixpath.normpath(self.root), posixpath.normpath(self.archive_dir)
        if archive == root or archive.startswith(root.rstrip("/") + "/"):
            return (
                f"archive_dir {self.archive_dir} is inside root {self.root}: archived files "
                "would be listed and copied again; choose a directory outside it"
            )
        return None

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if error := self.policy_error():  # environment values are known only now
            raise dg.Failure(f"SFTP source settings: {error}")

    def policy(self, source: str) -> SourcePolicy:
        return SourcePolicy(
            destination=self.destination_prefix or source,
            compression=self.compression,
            after_copy=self.after_copy,
            archive_dir=self.archive_dir,
        )

    def list_files(self) -> Listing:
        return list_tree(self.pool.get(), self.root, self.follow_symlinks)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._pool is not None:
            self._pool.close()


class MinIOResource(dg.ConfigurableResource):
    """The destination bucket on MinIO or any S3-compatible store."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str = "sftp-minio-assets"
    prefix: str = ""
    region: str = "us-east-1"

    _store: ObjectStore | None = PrivateAttr(default=None)

    @property
    def store(self) -> ObjectStore:
        """The bucket, created at the first write if it does not exist."""
        if self._store is None:
            self._store = ObjectStore(
                S3Settings(
                    endpoint_url=self.endpoint_url,
                    access_key=self.access_key,
                    secret_key=self.secret_key,
                    bucket=self.bucket,
                    prefix=self.prefix,
                    region=self.region,
                )
            )
        return self._store


class TransferLogResource(dg.ConfigurableResource):
    """The PostgreSQL `file_transfer_log` table: lock, history and statistics."""

    url: str = Field(description="postgresql://user:password@host:port/database")
    max_stale_lock_minutes: float = 30

    _log: TransferLog | None = PrivateAttr(default=None)

    @property
    def log(self) -> TransferLog:
        """The log, its schema created or migrated on first use."""
        if self._log is None:
            transfer_log = TransferLog(self.url, self.max_stale_lock_minutes)
            transfer_log.migrate()
            self._log = transfer_log
        return self._log

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._log is not None:
            self._log.close()


class TransferSettings(dg.ConfigurableResource):
    """How files are moved: the seed's MAX_WORKERS and LOCAL_DIR, and the upload shape."""

    max_workers: int = Field(default=4, description="Files transferred at once per run.")
    local_dir: str | None = Field(
        default=None, description="Set: SFTP -> local file -> S3 (the seed's path); else stream."
    )
    part_size_mb: int = Field(default=16, description="S3 multipart part size.")
    parts_in_flight: int = Field(default=4, description="Parts uploaded at once per file.")
    max_partitions_per_run: int = Field(
        default=500, description="Files in one run launched by the sensor, at most."
    )
    parallel_runs: int = Field(
        default=4, description="Runs a batch of new files is spread over (see dagster.yaml)."
    )
    retries: int = Field(
        default=3, description="Retries of a transient fault per file, before the step's."
    )
    retry_base_seconds: float = Field(default=1.0, description="First backoff; doubles each time.")
    partition_retention_days: float = Field(
        default=30,
        description="Partitions of files COMPLETED longer ago are deleted (the log keeps them).",
    )

    @property
    def retry(self) -> Retry:
        return Retry(attempts=self.retries + 1, base_seconds=self.retry_base_seconds)

    @property
    def tuning(self) -> Tuning:
        return Tuning(self.part_size_mb * MIB, self.parts_in_flight, self.local_dir)


class AlertSettings(dg.ConfigurableResource):
    """Where alerts on repeated errors go (see alerts.py)."""

    webhook_url: str | None = Field(
        default=None, description="Slack-compatible incoming webhook; unset: alerts are logged."
    )
    after_failures: int = Field(default=3, description="Failures in a row that raise an alert.")


def _optional(name: str):
    """EnvVar when set (so the UI shows where a value comes from), else None: the field's
    default applies (see _given)."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def _optional_int(name: str):
    return dg.EnvVar.int(name) if os.environ.get(name) else None


def _optional_float(name: str):
    # A plain value: EnvVar.int would not fit a float field, and there is no EnvVar.float.
    return float(os.environ[name]) if os.environ.get(name) else None


def _given(**values):
    """The values that are set; each field's default, stated once on the class, covers the rest."""
    return {name: value for name, value in values.items() if value is not None}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _globs(name: str) -> list[str]:
    return [p.strip() for p in os.environ.get(name, "").split(",") if p.strip()]


def source_from_env() -> SFTPResource:
    """The single source that the SFTP_* variables describe (named `default`)."""
    return SFTPResource(
        host=dg.EnvVar("SFTP_HOST"),
        username=dg.EnvVar("SFTP_USERNAME"),
        allow_unknown_host=_flag("SFTP_ALLOW_UNKNOWN_HOST"),
        follow_symlinks=_flag("SFTP_FOLLOW_SYMLINKS"),
        include=_globs("SFTP_INCLUDE"),
        exclude=_globs("SFTP_EXCLUDE"),
        **_given(
            port=_optional_int("SFTP_PORT"),
            password=_optional("SFTP_PASSWORD"),
            private_key=_optional("SFTP_PRIVATE_KEY_PATH"),
            known_hosts_path=_optional("SFTP_KNOWN_HOSTS_PATH"),
            host_key_sha256=_optional("SFTP_HOST_KEY_SHA256"),
            root=_optional("SFTP_ROOT"),
            min_file_age_seconds=_optional_int("MIN_FILE_AGE_SECONDS"),
            compression=os.environ.get("COMPRESSION") or None,
            after_copy=os.environ.get("AFTER_COPY") or None,
            archive_dir=_optional("ARCHIVE_DIR"),
        ),
    )


def shared_resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """The resources every source shares, as the environment variables in the README set them."""
    return {
        "minio": MinIOResource(
            endpoint_url=dg.EnvVar("MINIO_ENDPOINT_URL"),
            access_key=dg.EnvVar("MINIO_ACCESS_KEY"),
            secret_key=dg.EnvVar("MINIO_SECRET_KEY"),
            **_given(
                # BUCKET_NAME is the seed's name for it.
                bucket=_optional("MINIO_BUCKET") or _optional("BUCKET_NAME"),
                prefix=_optional("MINIO_PREFIX"),
                region=_optional("MINIO_REGION"),
            ),
        ),
        "transfer_log": TransferLogResource(
            url=dg.EnvVar("TRANSFER_DB_URL"),
            **_given(max_stale_lock_minutes=_optional_float("MAX_STALE_LOCK_MINUTES")),
        ),
        "transfer_settings": TransferSettings(
            **_given(
                max_workers=_optional_int("MAX_WORKERS"),
                local_dir=_optional("LOCAL_DIR"),
                retries=_optional_int("TRANSFER_RETRIES"),
                max_partitions_per_run=_optional_int("MAX_PARTITIONS_PER_RUN"),
                parallel_runs=_optional_int("PARALLEL_RUNS"),
                partition_retention_days=_optional_float("PARTITION_RETENTION_DAYS"),
            )
        ),
        "alerts": AlertSettings(
            **_given(
                webhook_url=_optional("ALERT_WEBHOOK_URL"),
                after_failures=_optional_int("ALERT_AFTER_FAILURES"),
            )
        ),
    }
