"""Dagster resources: thin, typed adapters over the SFTP client, the S3 store, the transfer log
and the worker.

Each opens its connections on first use and keeps them for the run (or sensor tick),
so that a batch of files shares SSH sessions, S3 connections and database connections.
A source is one SourceResource: its SFTPConnection and policy, with the resources all sources
share nested in it, so that the asset, the sensor and the dry run each get a ready object.
"""

import os
import posixpath
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import dagster as dg
import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, PrivateAttr, ValidationError, WrapValidator, model_validator

from ..db.connection import libpq_url
from ..db.transfer_log import TransferLog
from ..policy.destinations import DestinationTemplate
from ..policy.discovery import AutoRetry, Plan, Request, clashes, object_differs, plan_transfers
from ..policy.readiness import Readiness, ReadyMarker, marker_problem
from ..policy.transfer_window import TransferWindow
from ..s3.store import ObjectStore, S3Settings, bucket_problem, key_segments, needs_escaping
from ..sftp.client import (
    VARIABLES,
    FileFilter,
    Listing,
    SettingNames,
    SFTPConnector,
    SFTPPool,
    SFTPSettings,
    display,
    list_tree,
)
from ..sftp.sessions import SessionBudget, server_of
from ..transfer.copy import MIB, Tuning
from ..transfer.pgp import DEFAULT_SUFFIXES, PgpSettings, key_problem
from ..transfer.resume import RESUMABLE_HOURS
from ..worker.errors import SettingsError, TransferLogUnavailable, redact
from ..worker.source_policy import SourcePolicy
from ..worker.worker import Retry, Worker

# What dg.EnvVar and dg.EnvVar.int give: names, resolved by Dagster when the resource starts. A
# field given one is checked then (Dagster builds the resource again from the values), and
# where the variable is read at load (from_environment).
ENV_VARS = (dg.EnvVar, type(dg.EnvVar.int("ANY")))


def _check(problem: Callable[[Any], str | None]) -> WrapValidator:
    """A field's check: problem(value) says what is wrong with a value, if anything."""

    def check(value: object, handler: Callable[[object], Any]) -> Any:
        if isinstance(value, ENV_VARS):
            return handler(value)
        value = handler(value)
        if value is not None and (text := problem(value)):
            raise ValueError(text)
        return value

    return WrapValidator(check)


def _at_least(low: float) -> WrapValidator:
    return _check(lambda value: None if value >= low else f"must be at least {low:g}")


def _http_url(example: str) -> WrapValidator:
    def problem(url: str) -> str | None:
        try:
            parts = urlsplit(url.strip())
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:  # a port that is not a number
            return f"must be an http:// or https:// URL, e.g. {example}"
        if not valid:
            return f"must be an http:// or https:// URL, e.g. {example}"
        if parts.username or parts.password:
            return "must not carry credentials: they are settings of their own"
        return None

    return _check(problem)


def _host(host: str) -> str | None:
    if host.strip() and not any(c.isspace() or c in "/@" for c in host):
        return None
    return "must be a host name or address alone, e.g. sftp.example.com (no scheme, user or path)"


def _database_url(url: str) -> str | None:
    expected = "must be postgresql://user:password@host:port/database"
    try:
        port = conninfo_to_dict(libpq_url(url)).get("port") or "5432"
    except (psycopg.Error, ValueError):
        return expected
    if not url.startswith(("postgresql", "postgres")) or "://" not in url:
        return expected
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in str(port).split(",")):
        return f"{expected}, its port a number from 1 to 65535"
    return None


def _database_server(url: str) -> str:
    """How messages name the database: never with its password."""
    info = conninfo_to_dict(libpq_url(url))
    host, port = info.get("host", "localhost"), info.get("port", "5432")
    return f"postgresql://{info.get('user', '')}@{host}:{port}/{info.get('dbname', '')}"


def _parses(parse: Callable[[str], object]) -> WrapValidator:
    """A check that a text setting parses; parse's ValueError says what is wrong."""

    def problem(text: str) -> str | None:
        try:
            parse(text)
        except ValueError as exc:
            return str(exc)
        return None

    return _check(problem)


# How long a listing waits for a session of the server's budget: a sensor tick must end within
# Dagster's 60 s, and the next tick lists again.
LISTING_PATIENCE_SECONDS = 20.0

# Objects looked up at once when the sensor adopts rows that do not say what they copied.
ADOPTION_LOOKUPS = 8


class SFTPConnection(dg.ConfigurableResource):
    """How to reach, trust and log in to one SFTP server, and how many sessions it allows."""

    host: Annotated[str, _check(_host)]
    port: Annotated[
        int, _check(lambda port: None if 0 < port < 65536 else "must be a TCP port, 1 to 65535")
    ] = 22
    username: Annotated[str, _check(lambda name: None if name.strip() else "must not be empty")]
    password: str | None = Field(default=None, description="Password, or the key's passphrase.")
    private_key: str | None = Field(default=None, description="Key file path or PEM text.")
    known_hosts_path: str | None = None
    host_key_sha256: Annotated[
        str | None,
        _check(
            lambda pin: (
                None
                if pin.strip().startswith("SHA256:")
                else 'must be "SHA256:..." as ssh-keygen -lf prints it'
            )
        ),
    ] = Field(default=None, description='Pinned "SHA256:..." key.')
    allow_unknown_host: bool = Field(
        default=False, description="Accept any host key (logged). Never in production."
    )
    max_sessions: Annotated[int | None, _at_least(1)] = Field(
        default=None,
        description="SSH connections open at once to this server (host:port), every run, "
        "sensor and machine sharing the transfer log together; unset: no limit.",
    )
    # How messages name the source's settings to fix (sftp.SettingNames), as its user set them.
    settings_in: str = Field(
        default="",
        description='Where the source is set, e.g. "source partner_a in /etc/sources.yaml"; '
        "empty: the SFTP_* environment variables.",
    )
    setting_keys: dict[str, str] = Field(
        default_factory=dict, description="The keys its settings were set with there."
    )

    @property
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
            names=SettingNames(self.settings_in, self.setting_keys),
        )

    @property
    def server(self) -> str:
        """How messages name the server (never with a secret)."""
        return self.settings.server


class SourcePolicyConfig(dg.Config):
    """A source's policy: which of its files are taken, where they go, how many at once, and
    what becomes of them (worker.SourcePolicy is what the worker gets of it)."""

    root: str = "/"
    follow_symlinks: bool = Field(
        default=False, description="Follow links whose target is inside root; else skip them."
    )
    include: list[str] = Field(default_factory=list, description="Globs on the relative path.")
    exclude: list[str] = Field(default_factory=list)
    min_file_age_seconds: Annotated[int, _at_least(0)] = Field(
        default=60, description="Files modified more recently are left for a later tick."
    )
    destination_prefix: Annotated[
        str | None,
        _check(
            lambda prefix: None if key_segments(prefix) else "must name a folder, e.g. partner-a"
        ),
    ] = Field(
        default=None, description="Key prefix under MINIO_PREFIX; default: the source's name."
    )
    destination_template: Annotated[str | None, _parses(DestinationTemplate.parse)] = Field(
        default=None,
        description='Object key under MINIO_PREFIX, e.g. "partner-a/{mtime:%Y/%m/%d}/{path}" '
        "(destinations.py); unset: destination_prefix/path.",
    )
    max_workers: Annotated[int | None, _at_least(1)] = Field(
        default=None, description="Files copied at once per run; default: MAX_WORKERS."
    )
    transfer_window: Annotated[str | None, _parses(TransferWindow.parse)] = Field(
        default=None,
        description='Hours files may be fetched, e.g. "20:00-06:00 Europe/Paris" (UTC when no '
        "time zone is given); unset: any time.",
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
    max_bytes_per_second: Annotated[int | None, _at_least(1)] = Field(
        default=None,
        description="Bandwidth cap of the source's reads, all its runs together; unset: none.",
    )
    ready_marker: Annotated[str | None, _check(marker_problem)] = Field(
        default=None,
        description='Copy a file only once its marker exists: "{name}.done", "{stem}.ok", or '
        '"_SUCCESS" (one per directory); markers are never copied. Unset: no marker.',
    )
    require_stable_listing: bool = Field(
        default=False,
        description="Copy a new or changed file only once two sensor ticks saw the same size "
        "and mtime.",
    )
    server_checksums: bool = Field(
        default=False,
        description="Send each upload's SHA-256 for the S3 server to verify, where it does.",
    )
    pgp_private_key: Annotated[str | None, _check(lambda key: key_problem(key, secret=True))] = (
        Field(
            default=None,
            description="Armored PGP private key, or its file's path: files named with "
            "pgp_suffixes are decrypted in flight; unset: copied as they are.",
        )
    )
    pgp_passphrase: str | None = Field(default=None, description="The private key's passphrase.")
    pgp_verify_key: Annotated[str | None, _check(lambda key: key_problem(key, secret=False))] = (
        Field(
            default=None,
            description="The partner's armored PGP public key, or its file's path: set, a file "
            "not signed by it is refused.",
        )
    )
    pgp_suffixes: list[
        Annotated[
            str,
            _check(lambda suffix: None if len(suffix) > 1 and suffix[0] == "." else "e.g. .pgp"),
        ]
    ] = Field(
        default=list(DEFAULT_SUFFIXES),
        description="Names of encrypted files end so; the object's name is without it.",
    )

    @property
    def marker(self) -> ReadyMarker | None:
        return ReadyMarker(self.ready_marker) if self.ready_marker else None

    @property
    def file_filter(self) -> FileFilter:
        return FileFilter(tuple(self.include), tuple(self.exclude))

    @property
    def window(self) -> TransferWindow | None:
        return TransferWindow.parse(self.transfer_window) if self.transfer_window else None

    def problem(self) -> str | None:
        """What is wrong with the settings together, if anything."""
        if self.destination_prefix and self.destination_template:
            return (
                "destination_prefix and destination_template are both set: a template gives "
                "the whole key under MINIO_PREFIX; begin it with the prefix, e.g. "
                f"{self.destination_prefix.strip('/')}/{{path}}"
            )
        if not self.pgp_private_key and (self.pgp_passphrase or self.pgp_verify_key):
            return "pgp_passphrase and pgp_verify_key need pgp_private_key (SFTP_PGP_PRIVATE_KEY)"
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

    @model_validator(mode="wrap")
    @classmethod
    def _settings_fit(cls, values: object, handler: Callable[[object], "SourcePolicyConfig"]):
        policy = handler(values)
        unresolved = isinstance(values, dict) and any(
            isinstance(values.get(name), ENV_VARS)
            for name in ("root", "archive_dir", "destination_prefix", "destination_template")
        )
        if not unresolved and (error := policy.problem()):
            raise ValueError(error)
        return policy

    def for_worker(self, source: str) -> SourcePolicy:
        return SourcePolicy(
            destination=self.destination_prefix or source,
            template=(
                DestinationTemplate.parse(self.destination_template)
                if self.destination_template
                else None
            ),
            source=source,
            window=self.window,
            compression=self.compression,
            after_copy=self.after_copy,
            archive_dir=self.archive_dir,
            root=self.root,
            max_bytes_per_second=self.max_bytes_per_second,
            ready_marker=self.marker,
            file_filter=self.file_filter,
            server_checksums=self.server_checksums,
            pgp=self.pgp,
            min_file_age_seconds=self.min_file_age_seconds,
            require_stable_listing=self.require_stable_listing,
        )

    @property
    def pgp(self) -> PgpSettings | None:
        if not self.pgp_private_key:
            return None
        return PgpSettings(
            self.pgp_private_key,
            self.pgp_passphrase,
            self.pgp_verify_key,
            tuple(self.pgp_suffixes),
        )


class ObjectStoreResource(dg.ConfigurableResource):
    """The destination bucket on MinIO or any S3-compatible store, as s3/store.py's ObjectStore (its
    S3Settings from these fields). Users know it as MinIO: its resource key is `minio` and its
    variables MINIO_*."""

    endpoint_url: Annotated[str, _http_url("MINIO_ENDPOINT_URL=http://minio:9000")]
    access_key: str
    secret_key: str
    bucket: Annotated[
        str,
        _check(
            lambda name: (
                (problem := bucket_problem(name))
                and f"{problem}, e.g. MINIO_BUCKET=sftp-minio-assets"
            )
        ),
    ] = "sftp-minio-assets"
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

    url: Annotated[str, _check(_database_url)] = Field(
        description="postgresql://user:password@host:port/database"
    )
    max_stale_lock_minutes: Annotated[
        float, _check(lambda minutes: None if minutes > 0 else "must be more than 0")
    ] = 30

    _log: TransferLog | None = PrivateAttr(default=None)

    @property
    def log(self) -> TransferLog:
        """The log, its schema created or migrated on first use; TransferLogUnavailable if the
        database cannot be used."""
        if self._log is None:
            transfer_log = TransferLog(self.url, self.max_stale_lock_minutes)
            try:
                transfer_log.schema.ensure()
            except psycopg.OperationalError as exc:
                transfer_log.close()
                reason = " ".join(str(exc).split())
                raise TransferLogUnavailable(
                    redact(
                        f"the transfer log {_database_server(self.url)} (TRANSFER_DB_URL) cannot "
                        f"be used: {reason}. Check that the database is up and reachable from "
                        "here, and the host, port, user, password and database of "
                        "TRANSFER_DB_URL; the sensor tries again at its next tick.",
                        [conninfo_to_dict(libpq_url(self.url)).get("password")],
                    )
                ) from exc
            self._log = transfer_log
        return self._log

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._log is not None:
            self._log.close()


class TransferSettings(dg.ConfigurableResource):
    """How files are moved: MAX_WORKERS and LOCAL_DIR (meaning what they meant in the Airflow DAG
    this project replaces), and the upload shape."""

    max_workers: Annotated[int, _at_least(1)] = Field(
        default=4, description="Files transferred at once per run."
    )
    local_dir: str | None = Field(
        default=None, description="Set: SFTP -> a file in this folder -> S3; else streamed."
    )
    part_size_mb: Annotated[
        int,
        # S3's limits on a part (but the last): 5 MiB to 5 GiB.
        _check(lambda mb: None if 5 <= mb <= 5120 else "must be from 5 to 5120 (S3's part sizes)"),
    ] = Field(default=8, description="S3 multipart part size.")
    parts_in_flight: Annotated[int, _at_least(1)] = Field(
        default=4, description="Parts uploaded at once, all files of a run together."
    )
    resume_min_mb: Annotated[int, _at_least(0)] = Field(
        default=64,
        description="Files this big (uncompressed) resume where a failed transfer stopped; "
        "0: none.",
    )
    max_partitions_per_run: Annotated[int, _at_least(1)] = Field(
        default=500, description="Files in one run launched by the sensor, at most."
    )
    parallel_runs: Annotated[int, _at_least(1)] = Field(
        default=3,
        description="Runs a batch of new files is spread over: dagster.yaml runs at most 3 "
        "of one source at once.",
    )
    retries: Annotated[int, _at_least(0)] = Field(
        default=3, description="Retries of a transient fault per file, before the step's."
    )
    retry_base_seconds: Annotated[float, _at_least(0)] = Field(
        default=1.0, description="First backoff; doubles each time."
    )
    partition_retention_days: Annotated[float, _at_least(0)] = Field(
        default=30,
        description="Partitions of files COMPLETED longer ago are deleted (the log keeps them).",
    )
    auto_retry_backoff_minutes: list[Annotated[float, _at_least(0)]] = Field(
        default=[0, 1, 5, 30, 60],
        description="Wait before the n-th automatic retry of a failed or crashed file; the "
        "last value repeats.",
    )
    auto_retry_limit: Annotated[int, _at_least(0)] = Field(
        default=24, description="Automatic retries of a file, after which it waits for a rerun."
    )

    @property
    def retry(self) -> Retry:
        return Retry(attempts=self.retries + 1, base_seconds=self.retry_base_seconds)

    @property
    def auto_retry(self) -> AutoRetry:
        return AutoRetry(tuple(self.auto_retry_backoff_minutes), self.auto_retry_limit)

    @property
    def tuning(self) -> Tuning:
        return Tuning(
            self.part_size_mb * MIB, self.parts_in_flight, self.local_dir, self.resume_min_mb * MIB
        )


class AlertSettings(dg.ConfigurableResource):
    """Where alerts on repeated errors go (see alerts.py)."""

    webhook_url: Annotated[
        str | None, _http_url("ALERT_WEBHOOK_URL=https://hooks.slack.com/services/...")
    ] = Field(
        default=None, description="Slack-compatible incoming webhook; unset: alerts are logged."
    )
    after_failures: Annotated[int, _at_least(1)] = Field(
        default=3, description="Failures in a row that raise an alert."
    )


class SourceResource(dg.ConfigurableResource):
    """One source, ready for each entry point: its SFTP connection and policy, with the bucket,
    transfer log and transfer settings that all sources share nested in it (Dagster's nested
    resources). The asset gets a worker, the sensor and the dry run a listing and a plan."""

    name: str = Field(description="The source's name: its asset, partitions and log rows.")
    connection: SFTPConnection
    policy: SourcePolicyConfig
    minio: ObjectStoreResource
    transfer_log: TransferLogResource
    transfer_settings: TransferSettings

    _pool: SFTPPool | None = PrivateAttr(default=None)

    @property
    def location(self) -> str:
        """Its server and root, for messages: sftp://user@host:port/root."""
        return f"{self.connection.server}{self.policy.root}"

    @property
    def key_prefix(self) -> str:
        """What the keys of all its objects begin with (worker.SourcePolicy.key_prefix)."""
        return self.policy.for_worker(self.name).key_prefix(self.minio.prefix)

    @property
    def concurrency(self) -> int:
        """Files copied at once per run: the source's max_workers, else MAX_WORKERS; never more
        than max_sessions, as each needs a session of its own."""
        workers = self.policy.max_workers or self.transfer_settings.max_workers
        return min(workers, self.connection.max_sessions or workers)

    @property
    def pool(self) -> SFTPPool:
        """The source's SFTP sessions: one per thread, opened on first use and closed after the
        run or tick. With max_sessions set, within the server's session budget, whose leases
        live in the transfer log's database, so that every process sharing it counts."""
        if self._pool is None:
            settings, budget = self.connection.settings, None
            if self.connection.max_sessions is not None:
                budget = SessionBudget(
                    self.transfer_log.log.sessions.leases(),
                    server_of(settings.host, settings.port),
                    self.name,
                    self.connection.max_sessions,
                )
            self._pool = SFTPPool(SFTPConnector(settings), budget)
        return self._pool

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._pool is not None:
            self._pool.close()

    def list_files(self) -> Listing:
        """The files below root. Errors name the server and the setting to fix: RootUnavailable,
        sftp.CredentialsError, sftp.HostKeyError, sftp.ServerUnreachable; and
        sessions.SessionsBusy when the server's session budget stays full."""
        settings = self.connection.settings
        return list_tree(
            self.pool.get(purpose="listing", patience=LISTING_PATIENCE_SECONDS),
            self.policy.root,
            self.policy.follow_symlinks,
            settings.server,
            settings.names,
        )

    def plan(
        self, listing: Listing, in_flight: Collection[str] = (), max_requests: int | None = None
    ) -> Plan:
        """What to copy of the listed files, from the log: the sensor's plan and the dry run's."""
        log = self.transfer_log.log
        sightings = log.sensor_memory.sightings(self.name)
        states = log.sensor_memory.states(self.name)
        return plan_transfers(
            listing.files,
            states,
            in_flight,
            now=time.time(),
            min_age_seconds=self.policy.min_file_age_seconds,
            file_filter=self.policy.file_filter,
            max_requests=len(listing.files) if max_requests is None else max_requests,
            auto_retry=self.transfer_settings.auto_retry,
            readiness=Readiness.of(
                listing.files, self.policy.marker, sightings, self.policy.require_stable_listing
            ),
            refused=self._clashes(listing, states),
        )

    def adopt(self, unverified: list[Request]) -> tuple[list[str], list[tuple[Request, str]]]:
        """Files whose COMPLETED row does not say which content was copied, judged by their
        objects (discovery.object_differs): the rows of those whose object is the file's say
        so from now on (adopted, returned by key); the others are to be copied again (returned
        with why). Their objects are looked up ADOPTION_LOOKUPS at a time."""
        policy, store = self.policy.for_worker(self.name), self.minio.store

        def judge(request: Request) -> tuple[Request, str, str | None]:
            file = request.file
            key = policy.object_name(self.minio.prefix, file.path, file.mtime)
            return request, key, object_differs(store.head(key), file)

        with ThreadPoolExecutor(ADOPTION_LOOKUPS) as pool:
            judged = list(pool.map(judge, unverified))
        adopted = [(r.key, r.file.size, r.file.mtime, key) for r, key, why in judged if not why]
        self.transfer_log.log.sensor_memory.adopt(self.name, adopted)
        return [key for key, *_ in adopted], [(r, why) for r, _, why in judged if why]

    def _clashes(self, listing: Listing, states: dict) -> dict[str, str]:
        """Listed files that would share an object, and why each is refused (discovery.clashes).
        Without a template or decryption, only names S3 cannot hold are escaped into others:
        when no listed name needs escaping, no key is computed."""
        policy, accepts = self.policy.for_worker(self.name), self.policy.file_filter.accepts
        if (
            policy.template is None
            and policy.pgp is None  # data.csv.pgp is stored as data.csv
            and not any(needs_escaping(f.path) for f in listing.files)
        ):
            return {}
        today = datetime.now(UTC)
        return clashes(
            [f for f in listing.files if accepts(f.path)],
            states,
            lambda f: policy.object_name(self.minio.prefix, f.path, f.mtime, today),
            self.connection.settings.names("destination_template"),
        )

    def worker(
        self,
        run_id: str | None = None,
        run_finished: Callable[[str], bool] = lambda run_id: False,
        report: Callable[[str], None] | None = None,
    ) -> Worker:
        """A worker for a run's files; run_finished(run_id): whether Dagster reports that run
        over, so that the claims it holds are dead; report(line): the run's log, for progress
        of long copies and resumed ones."""
        return Worker(
            source=self.name,
            sftp_settings=self.connection.settings,
            sftp_pool=self.pool,
            store=self.minio.store,
            transfer_log=self.transfer_log.log,
            tuning=self.transfer_settings.tuning,
            run_id=run_id,
            secrets=(
                self.connection.password,
                self.minio.secret_key,
                self.minio.access_key,
                self.policy.pgp_passphrase,
                self.policy.pgp_private_key,
            ),
            retry=self.transfer_settings.retry,
            policy=self.policy.for_worker(self.name),
            run_finished=run_finished,
            report=report,
        )

    def abort_stale_uploads(self) -> int:
        """Abort the multipart uploads of dead workers, older than the stale window; not those
        of files being copied (a big file may take longer than that)."""
        return self.minio.store.abort_stale_uploads(
            self.key_prefix,
            self.transfer_log.max_stale_lock_minutes * 60,
            live=self.transfer_log.log.sensor_memory.being_copied(
                self.name, RESUMABLE_HOURS * 3600
            ),
        )

    def object_uri(self, path: str, mtime: int) -> str:
        """Where the file at path (relative to root), modified at mtime, is copied to today."""
        name = self.policy.for_worker(self.name).object_name(self.minio.prefix, path, mtime)
        return self.minio.store.uri(display(name))


R = TypeVar("R", bound=dg.ConfigurableResource)

# Fields whose values no message repeats: secrets, and URLs that may carry one.
UNECHOED = {
    *("password", "private_key", "access_key", "secret_key"),
    *("pgp_private_key", "pgp_passphrase", "pgp_verify_key"),
    *("url", "endpoint_url", "webhook_url"),
}


def checked(cls: type[R], values: dict[str, object], name: Callable[[str], str]) -> R:
    """cls(**values), or a SettingsError naming each wrong field as name(field) does."""
    try:
        return cls(**values)
    except ValidationError as exc:
        # Not chained: pydantic's own message repeats the values, secrets included.
        problems = [_problem(error, name) for error in exc.errors()]
    raise SettingsError("; ".join(problems))


def _problem(error: Any, name: Callable[[str], str]) -> str:
    if error["type"] == "value_error":
        text = str(error["ctx"]["error"])
    elif error["type"] == "missing" or error["input"] is None:
        text = "required, and not set"
    else:
        text = error["msg"]
    # Settings wrong together (SourcePolicyConfig.problem) have no single field.
    return f"{name(str(error['loc'][0]))}: {text}" if error["loc"] else text


def with_variables(plain: R, values: dict[str, object], variables: dict[str, str]) -> R:
    """plain, checked, again, with each field read from an environment variable passed as
    Dagster's EnvVar where the field's type has one: the UI shows where the value comes from,
    and secrets stay out of the run's configuration."""
    cls = type(plain)
    from_variables = {}
    for field, variable in variables.items():
        annotation = cls.model_fields[field].annotation
        if annotation in (str, str | None):
            from_variables[field] = dg.EnvVar(variable)
        elif annotation in (int, int | None):
            from_variables[field] = dg.EnvVar.int(variable)
        else:  # there is no EnvVar for floats, flags or choices: the value checked at load
            from_variables[field] = getattr(plain, field)
    return cls(**values, **from_variables)


def from_environment(cls: type[R], variables: dict[str, str], **values: object) -> R:
    """cls with each field of `variables` read from the environment variable it names when that
    is set (else the field's default applies, stated once on the class), and `values` as given.
    Checked now, so that a value that can never work fails the load naming its variable."""
    given = {field: name for field, name in variables.items() if os.environ.get(name)}

    def name(field: str) -> str:
        variable = variables.get(field, field)
        if field in UNECHOED or field not in given:
            return variable
        return f"{variable}={os.environ[variable]!r}"

    plain = checked(cls, {**values, **{f: os.environ[v] for f, v in given.items()}}, name)
    return with_variables(plain, values, given)


def _given(**values):
    """The values that are set; each field's default, stated once on the class, covers the rest."""
    return {name: value for name, value in values.items() if value is not None}


def _floats(name: str) -> list[float] | None:
    """A comma-separated list of numbers, or None when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return [float(part) for part in value.split(",")]
    except ValueError:
        raise SettingsError(f"{name}={value!r}: expected numbers separated by commas") from None


def _globs(name: str) -> list[str]:
    return [p.strip() for p in os.environ.get(name, "").split(",") if p.strip()]


def source_from_env(shared: dict[str, dg.ConfigurableResource]) -> SourceResource:
    """The single source that the SFTP_* variables describe (named `default`), with the
    resources all sources share (shared_resources_from_env)."""
    parts = each_checked(
        connection=lambda: from_environment(SFTPConnection, _variables_of(SFTPConnection)),
        policy=lambda: from_environment(
            SourcePolicyConfig,
            _variables_of(SourcePolicyConfig),
            include=_globs("SFTP_INCLUDE"),
            exclude=_globs("SFTP_EXCLUDE"),
            **_given(pgp_suffixes=_globs("SFTP_PGP_SUFFIXES") or None),
        ),
    )
    return source_resource("default", parts["connection"], parts["policy"], shared)


def _variables_of(cls: type) -> dict[str, str]:
    """The SFTP_* (and other) variables that set cls's fields for the single source."""
    return {field: variable for field, variable in VARIABLES.items() if field in cls.model_fields}


def source_resource(
    name: str,
    connection: SFTPConnection,
    policy: SourcePolicyConfig,
    shared: dict[str, dg.ConfigurableResource],
) -> SourceResource:
    """The source's resource: its own connection and policy, and the shared resources it uses."""
    return SourceResource(
        name=name,
        connection=connection,
        policy=policy,
        **{key: shared[key] for key in ("minio", "transfer_log", "transfer_settings")},
    )


def shared_resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """The resources every source shares, as the environment variables in the README set them;
    one SettingsError names every wrong variable."""
    return each_checked(
        minio=lambda: from_environment(
            ObjectStoreResource,
            {
                "endpoint_url": "MINIO_ENDPOINT_URL",
                "access_key": "MINIO_ACCESS_KEY",
                "secret_key": "MINIO_SECRET_KEY",
                # BUCKET_NAME: its name in the Airflow DAG this project replaces.
                "bucket": "MINIO_BUCKET" if os.environ.get("MINIO_BUCKET") else "BUCKET_NAME",
                "prefix": "MINIO_PREFIX",
                "region": "MINIO_REGION",
            },
        ),
        transfer_log=lambda: from_environment(
            TransferLogResource,
            {"url": "TRANSFER_DB_URL", "max_stale_lock_minutes": "MAX_STALE_LOCK_MINUTES"},
        ),
        transfer_settings=lambda: from_environment(
            TransferSettings,
            {
                "max_workers": "MAX_WORKERS",
                "local_dir": "LOCAL_DIR",
                "resume_min_mb": "RESUME_MIN_MB",
                "retries": "TRANSFER_RETRIES",
                "max_partitions_per_run": "MAX_PARTITIONS_PER_RUN",
                "parallel_runs": "PARALLEL_RUNS",
                "partition_retention_days": "PARTITION_RETENTION_DAYS",
                "auto_retry_limit": "AUTO_RETRY_LIMIT",
            },
            **_given(auto_retry_backoff_minutes=_floats("AUTO_RETRY_BACKOFF_MINUTES")),
        ),
        alerts=lambda: from_environment(
            AlertSettings,
            {"webhook_url": "ALERT_WEBHOOK_URL", "after_failures": "ALERT_AFTER_FAILURES"},
        ),
    )


T = TypeVar("T")


def each_checked(**builds: Callable[[], T]) -> dict[str, T]:
    """Each build's result by name; or one SettingsError naming what every failing build found."""
    built: dict[str, T] = {}
    problems: list[str] = []
    for name, build in builds.items():
        try:
            built[name] = build()
        except SettingsError as exc:
            problems.append(str(exc))
    if problems:
        raise SettingsError("; ".join(problems))
    return built
