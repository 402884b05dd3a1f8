"""Dagster resources: thin, typed adapters over the SFTP client, the S3 store, the transfer log
and the worker.

Each opens its connections on first use and keeps them for the run (or sensor tick),
so that a batch of files shares SSH sessions, S3 connections and database connections.
A source is one SourceResource: its SFTPConnection and policy, with the resources all sources
share nested in it, so that the asset, the sensor and the dry run each get a ready object.
"""

import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated

import dagster as dg
import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, PrivateAttr

from ..db.connection import libpq_url
from ..db.transfer_log import TransferLog
from ..policy.discovery import AutoRetry, Request, object_differs
from ..policy.listing_state import ListingState
from ..policy.survey import Survey, survey
from ..s3.store import ObjectStore, S3Settings, bucket_problem, needs_escaping
from ..sftp.client import RemoteFile, SFTPPool, display
from ..sftp.listing import ListedDirectory, Listing, Recorded, Resume, collect, scan_tree
from ..sftp.openssh import connector_for
from ..sftp.sessions import SessionBudget, server_of
from ..transfer.copy import MIB, Tuning
from ..transfer.failures import describe
from ..transfer.resume import RESUMABLE_HOURS
from ..worker.errors import TransferLogUnavailable, redact
from ..worker.worker import Retry, Worker
from .source_config import SFTPConnection, SourcePolicyConfig
from .validators import (
    at_least,
    check,
    database_server,
    database_url_problem,
    http_url,
)

# How long a listing waits for a session of the server's budget: a sensor tick must end within
# Dagster's 60 s, and the next tick lists again.
LISTING_PATIENCE_SECONDS = 20.0

# Objects looked up at once when the sensor adopts rows that do not say what they copied.
ADOPTION_LOOKUPS = 8


class ObjectStoreResource(dg.ConfigurableResource):
    """The destination bucket on MinIO or any S3-compatible store, as s3/store.py's ObjectStore (its
    S3Settings from these fields). Users know it as MinIO: its resource key is `minio` and its
    variables MINIO_*."""

    endpoint_url: Annotated[str, http_url("MINIO_ENDPOINT_URL=http://minio:9000")]
    access_key: str
    secret_key: str
    bucket: Annotated[
        str,
        check(
            lambda name: (
                (problem := bucket_problem(name))
                and f"{problem}, e.g. MINIO_BUCKET=sftp-minio-assets"
            )
        ),
    ] = "sftp-minio-assets"
    prefix: str = ""
    region: str = "us-east-1"
    timeout_seconds: Annotated[float, check(lambda s: None if s > 0 else "must be more than 0")] = (
        Field(
            default=60,
            description="To connect, and for each answer: a request whose answer stalls longer "
            "is sent again (s3/retries.py).",
        )
    )

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
                    timeout_seconds=self.timeout_seconds,
                )
            )
        return self._store


class TransferLogResource(dg.ConfigurableResource):
    """The PostgreSQL `file_transfer_log` table: lock, history and statistics."""

    url: Annotated[str, check(database_url_problem)] = Field(
        description="postgresql://user:password@host:port/database"
    )
    max_stale_lock_minutes: Annotated[
        float, check(lambda minutes: None if minutes > 0 else "must be more than 0")
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
                        f"the transfer log {database_server(self.url)} (TRANSFER_DB_URL) cannot "
                        f"be used: {reason}. Check that the database is up and reachable from "
                        "here, and the host, port, user, password and database of "
                        "TRANSFER_DB_URL; the sensor tries again at its next tick.",
                        [str(conninfo_to_dict(libpq_url(self.url)).get("password") or "")],
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

    max_workers: Annotated[int, at_least(1)] = Field(
        # 16, as tuned rclone's --transfers: a far partner's small file waits on round trips,
        # and only files in flight hide them (4: 2.4x tuned rclone at 40 ms; 16: 1x).
        default=16,
        description="Files transferred at once per run.",
    )
    local_dir: str | None = Field(
        default=None, description="Set: SFTP -> a file in this folder -> S3; else streamed."
    )
    part_size_mb: Annotated[
        int,
        # S3's limits on a part (but the last): 5 MiB to 5 GiB.
        check(lambda mb: None if 5 <= mb <= 5120 else "must be from 5 to 5120 (S3's part sizes)"),
    ] = Field(default=8, description="S3 multipart part size.")
    parts_in_flight: Annotated[int, at_least(1)] = Field(
        default=4, description="Parts uploaded at once, all files of a run together."
    )
    resume_min_mb: Annotated[int, at_least(0)] = Field(
        default=64,
        description="Files this big (uncompressed) resume where a failed transfer stopped; "
        "0: none.",
    )
    max_partitions_per_run: Annotated[int, at_least(1)] = Field(
        # A run's start costs seconds of CPU (a process, Dagster, the code, its connections):
        # runs of 500 files cost 10,000 small files 4.7 ms of CPU per file more than 3 runs did.
        default=5000,
        description="Files in one run launched by the sensor, at most.",
    )
    parallel_runs: Annotated[int, at_least(1)] = Field(
        default=3,
        description="Runs a batch of new files is spread over, at most, as far as its files "
        "are worth (policy/discovery.py runs_worth): dagster.yaml runs at most 3 of one source "
        "at once.",
    )
    retries: Annotated[int, at_least(0)] = Field(
        default=3, description="Retries of a transient fault per file, before the step's."
    )
    retry_base_seconds: Annotated[float, at_least(0)] = Field(
        default=1.0, description="First backoff; doubles each time."
    )
    partition_retention_days: Annotated[float, at_least(0)] = Field(
        default=30,
        description="Partitions of files COMPLETED longer ago are deleted (the log keeps them).",
    )
    auto_retry_backoff_minutes: list[Annotated[float, at_least(0)]] = Field(
        default=[0, 1, 5, 30, 60],
        description="Wait before the n-th automatic retry of a failed or crashed file; the "
        "last value repeats.",
    )
    auto_retry_limit: Annotated[int, at_least(0)] = Field(
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
        str | None, http_url("ALERT_WEBHOOK_URL=https://hooks.slack.com/services/...")
    ] = Field(
        default=None, description="Slack-compatible incoming webhook; unset: alerts are logged."
    )
    after_failures: Annotated[int, at_least(1)] = Field(
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
            self._pool = SFTPPool(connector_for(settings), budget)
        return self._pool

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._pool is not None:
            self._pool.close()

    def list_files(self) -> Listing:
        """The files below root. Errors name the server and the setting to fix: RootUnavailable,
        sftp.CredentialsError, sftp.HostKeyError, sftp.ServerUnreachable; and
        sessions.SessionsBusy when the server's session budget stays full."""
        return collect(self._scan())

    def _scan(
        self, recorded: Recorded | None = None, resume: Resume | None = None
    ) -> Iterator[ListedDirectory]:
        """The directories below root, each as it is read (listing.scan_tree), on the listing's
        session of the server's budget; recorded and resume: a sensor tick's (ListingState)."""
        settings = self.connection.settings
        return scan_tree(
            self.pool.get(purpose="listing", patience=LISTING_PATIENCE_SECONDS),
            self.policy.root,
            self.policy.follow_symlinks,
            settings.server,
            settings.names,
            recorded,
            resume,
        )

    def survey(
        self,
        in_flight: Collection[str] = (),
        max_requests: int | None = None,
        *,
        remember: bool = False,
    ) -> Survey:
        """What to copy of the source's files, its listing compared with the log where the
        rows are (policy/survey.py): the sensor's plan and the dry run's. remember (the
        sensor): list as policy/listing_state.py says (going on where the last tick stopped,
        leaving unchanged directories unread with listing fast) and record what this listing
        saw for the next (Survey.left: the directories the next tick reads first). A listing
        whose connection is lost part way (cut, reset, timed out) is read again once, on a new
        one (Survey.reconnected says why). Errors as list_files."""
        try:
            return self._survey(in_flight, max_requests, remember)
        except Exception as exc:
            if not self.pool.lost():
                raise
            lost = f"{self.connection.settings.server}: {describe(exc)}"
        self.pool.discard()
        surveyed = self._survey(in_flight, max_requests, remember)
        return replace(surveyed, reconnected=f"the listing's connection was lost ({lost})")

    def _survey(
        self, in_flight: Collection[str], max_requests: int | None, remember: bool
    ) -> Survey:
        settings, policy = self.connection.settings, self.policy
        memory = self.transfer_log.log.sensor_memory
        state = None
        if remember:
            state = ListingState.load(
                memory,
                self.name,
                fast=policy.listing == "fast",
                full_every_hours=policy.full_listing_every_hours,
                seconds=policy.listing_seconds_per_tick,
            )
        scan = self._scan(state.recorded, state.resume) if state else self._scan()
        surveyed = survey(
            scan,
            memory,
            self.name,
            in_flight=in_flight,
            now=time.time(),
            min_age_seconds=policy.min_file_age_seconds,
            file_filter=policy.file_filter,
            max_requests=max_requests,
            auto_retry=self.transfer_settings.auto_retry,
            marker=policy.marker,
            sightings=memory.sightings(self.name),
            stable_listing=policy.require_stable_listing,
            clash_key=self._clash_key(),
            setting=settings.names("destination_template"),
        )
        if state is None:
            return surveyed
        state.record(memory, surveyed.directories)
        read_all = all(directory.read for directory in surveyed.directories)
        complete = state.began_round and not state.left and read_all
        return replace(surveyed, left=state.left, complete=complete)

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

    def _clash_key(self) -> Callable[[RemoteFile], str | None]:
        """The object key of a listed file where it may be another's (policy/survey.py): with a
        template or decryption, any file's; without, only a name S3 cannot hold as it is (it is
        escaped) and a name with a % (which an escaped name's key can equal)."""
        policy, prefix, today = (
            self.policy.for_worker(self.name),
            self.minio.prefix,
            datetime.now(UTC),
        )
        every = policy.template is not None or policy.pgp is not None  # data.csv.pgp: data.csv

        def clash_key(file: RemoteFile) -> str | None:
            if every or "%" in file.path or needs_escaping(file.path):
                return policy.object_name(prefix, file.path, file.mtime, today)
            return None

        return clash_key

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
