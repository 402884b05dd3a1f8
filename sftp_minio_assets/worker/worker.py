"""What a worker does for one file: claim it in the log, copy it, record how it went.

Plain Python, no Dagster: the asset runs `Worker.transfer` on a thread pool, one call per file.
Transient faults (a reset connection, a restarting server) are retried here, with exponential
backoff and jitter, each attempt a new claim; permanent ones (file gone, access refused, wrong
credentials or host key) fail at once.
"""

from __future__ import annotations

import logging
import posixpath
import random
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Literal
from urllib.parse import quote

import paramiko
import psycopg

from ..core.identity import process_id, worker_id
from ..core.keys import decode_key
from ..core.model import TransferResult
from ..core.units import duration, mib
from ..db.claims import Claim
from ..db.transfer_log import TransferLog
from ..policy.transfer_window import wait_until_open
from ..s3.store import ObjectStore
from ..sftp.client import SFTPPool, SFTPSettings, display, remote_bytes
from ..sftp.wire import close_without_waiting, stat_and_open
from ..transfer.bandwidth import BandwidthCap
from ..transfer.copy import MIB, Copy, Tuning, copy_file
from ..transfer.failures import Committed, ObjectOfAnotherSource, SourceChanged, TransferFailed
from ..transfer.recovery import earlier_copy, finish_commit
from ..transfer.resume import Journal, resumable_hashing, still_usable
from .after_copy import AfterCopy
from .errors import KeyTaken, NotAFile, RunStopped, advice, is_permanent, redact
from .source_policy import SourcePolicy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retry:
    attempts: int = 4  # per file and run, the first included
    base_seconds: float = 1.0
    max_seconds: float = 30.0

    def delay(self, failures: int) -> float:
        """Exponential backoff with ±50% jitter, so that workers do not retry in lockstep."""
        return min(self.max_seconds, self.base_seconds * 2 ** (failures - 1)) * random.uniform(
            0.5, 1.5
        )


@dataclass(frozen=True)
class Outcome:
    key: str  # the partition key, which is also the log's filename
    # busy: another worker holds the file right now; its run reports it.
    status: Literal["transferred", "skipped", "busy", "failed"]
    message: str
    metadata: dict[str, object] = field(default_factory=dict)
    permanent: bool = False  # failed, and retrying cannot help
    changed: bool = False  # failed because the file changed while it was copied
    # failed around the commit: the object may have landed (see transfer/failures.py: Committed)
    committed: Committed | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _File:
    """One file of the source, named as each side knows it."""

    key: str  # the partition key, which is also the log's filename
    path: str  # relative to the source's root
    remote_path: str  # on the SFTP server
    object_name: str  # its object's key in the bucket
    where: str  # "server/path -> s3://bucket/key", to begin messages with


class Worker:
    """Copies the files of one source, each under its claim in the transfer log (the table,
    `self.transfer_log`; `logger` is Python's), and retries transient faults."""

    def __init__(
        self,
        source: str,
        sftp_settings: SFTPSettings,
        sftp_pool: SFTPPool,
        store: ObjectStore,
        transfer_log: TransferLog,
        tuning: Tuning,
        run_id: str | None = None,
        secrets: tuple[str | None, ...] = (),
        retry: Retry = Retry(),
        policy: SourcePolicy | None = None,
        run_finished: Callable[[str], bool] = lambda run_id: False,
        report: Callable[[str], None] | None = None,
    ):
        self.source = source
        self.policy = policy or SourcePolicy(destination=source)
        self.sftp_settings = sftp_settings
        self.pool = sftp_pool
        self.store = store
        self.transfer_log = transfer_log
        self.tuning = tuning
        self.run_id = run_id
        self.secrets = secrets
        self.retry = retry
        # Whether a run (by id) is known to be over, so that its claims are dead.
        self.run_finished = run_finished
        # A live transfer refreshes its claim well within the stale window, and says how far
        # it got: report(line) writes to the run's log (Python's logger by default).
        self.heartbeat_seconds = min(30.0, transfer_log.claims.stale_minutes * 60 / 4)
        # Set when the run is terminated: copies stop at their next chunk, retries are not made.
        self.stopping = threading.Event()
        self.report = report or logger.info
        self.after_copy = AfterCopy(self.policy, sftp_pool.get, sftp_settings.server, secrets)
        self.bandwidth_cap = None
        if self.policy.max_bytes_per_second:
            process = process_id()
            self.bandwidth_cap = BandwidthCap(
                self.policy.max_bytes_per_second,
                share=partial(transfer_log.claims.share_of_copies, source, process),
            )

    def transfer_many(self, keys: list[str], max_workers: int) -> Iterator[Outcome]:
        """Outcomes in the order the files finish, max_workers at a time. A thread that finds
        no file left to start closes its SFTP session: under a session budget, its slot goes to
        whoever waits for one, in this run or another."""
        last_started = threading.Event()  # files start in order: none is left to start

        def transfer(key: str, last: bool) -> Outcome:
            if last:
                last_started.set()
            try:
                return self.transfer(key)
            finally:
                if last_started.is_set():
                    self.pool.discard()

        with ThreadPoolExecutor(max_workers, thread_name_prefix="transfer") as pool:
            futures = [pool.submit(transfer, key, i == len(keys) - 1) for i, key in enumerate(keys)]
            try:
                for future in _as_completed(futures):
                    yield future.result()
            except BaseException:  # the run is terminated (or its caller stopped early)
                self.stopping.set()  # each copy stops at its next chunk, files not started never
                pool.shutdown(wait=False, cancel_futures=True)
                raise

    def transfer(self, key: str) -> Outcome:
        """Attempts until the file is copied, skipped, or failed for good (or retries run out)."""
        failures = 0
        committed = None
        while True:
            outcome = self._attempt(key, committed)
            committed = outcome.committed or committed
            if outcome.status != "failed" or outcome.permanent or self.stopping.is_set():
                return outcome
            if outcome.changed and self.policy.gated:
                return outcome  # the sensor requests it again once it passes the gate
            failures += 1
            if failures >= self.retry.attempts:
                return outcome
            delay = self.retry.delay(failures)
            logger.warning("%s (attempt %d; retrying in %.1f s)", outcome.message, failures, delay)
            if self.stopping.wait(delay):  # the run stopped meanwhile: no other attempt
                return outcome

    def _attempt(self, key: str, committed: Committed | None = None) -> Outcome:
        """One claim of the file and one copy; committed: what an earlier attempt may have left."""
        file = self._file(key)
        # Outside the source's transfer window (a run launched by hand): wait, without holding
        # a session, and without failing.
        wait_until_open(self.policy.window, self.pool.discard, file.where, self.report)
        me = worker_id()
        claim: Claim | None = None
        opened: paramiko.SFTPFile | None = None
        try:
            attrs, opened = self._stat(file)
            if self.policy.template is not None:  # its key may depend on the mtime
                file = self._file(key, int(attrs.st_mtime or 0))
            claim, row = self._claim(file, attrs, me)
            if claim is None:
                return self._not_claimed(file, row)
            # A retry of a dated key ({date}) keeps the key of the content's first claim.
            if claim.object_key and claim.object_key != file.object_name:
                file = self._file(key, object_name=claim.object_key)
            result = self._copy(file, attrs, claim, committed, opened)
            self._complete(claim, result)
        except Exception as exc:
            return self._failed(file, claim, me, exc)
        finally:
            if opened is not None:  # not copied from (closed by the copy otherwise)
                close_without_waiting(opened)
        action = self._after_copy(file.remote_path, attrs, claim)
        return self._transferred(file, result, claim, me, action)

    def _file(self, key: str, mtime: int | None = None, object_name: str | None = None) -> _File:
        """The file of a partition key. With a template, its object is known once its mtime
        is (before that, messages show the template)."""
        path = decode_key(key)
        remote_path = posixpath.join(self.policy.root, path)
        prefix, template = self.store.settings.prefix, self.policy.template
        if template is not None and object_name is None and mtime is None:
            shown = prefix.strip("/") + "/" + template.text
        else:
            if object_name is None:
                object_name = self.policy.object_name(prefix, path, mtime or 0)
            shown = display(object_name)
        where = (
            f"{self.sftp_settings.server}{display(_absolute(remote_path))} -> "
            f"{self.store.uri(shown.lstrip('/'))}"
        )
        return _File(key, path, remote_path, object_name or "", where)

    def _stat(self, file: _File) -> tuple[paramiko.SFTPAttributes, paramiko.SFTPFile | None]:
        """The file's attributes by its path, and the file opened for its copy, in one round
        trip. The open's error is left for the copy to raise (its attempt is claimed and failed
        then, as any copy's)."""
        attrs, opened = stat_and_open(self.pool.get(), remote_bytes(file.remote_path))
        if not stat.S_ISREG(attrs.st_mode or 0):
            if isinstance(opened, paramiko.SFTPFile):
                close_without_waiting(opened)
            raise NotAFile(f"{display(file.path)} is not a regular file any more")
        return attrs, opened if isinstance(opened, paramiko.SFTPFile) else None

    def _claim(self, file: _File, attrs, me: str) -> tuple[Claim | None, dict]:
        """The claim on the file, taken over from its holder if that run is over; else None and
        the file's log row, which says why."""
        claim_now = partial(
            self.transfer_log.claims.claim,
            self.source,
            file.key,
            size_bytes=attrs.st_size or 0,
            remote_mtime=int(attrs.st_mtime or 0),
            object_key=file.object_name,
            worker_id=me,
            run_id=self.run_id,
            keep_recorded_key=self.policy.template is not None and self.policy.template.dated,
        )
        claim = claim_now()
        if claim is not None:
            return claim, {}
        row = self.transfer_log.claims.get(self.source, file.key) or {}
        if dead_run := self._dead_holder(row):
            claim = claim_now(dead_run=dead_run)  # its holder's run is over: take it over
        return claim, row

    def _copy(
        self,
        file: _File,
        attrs,
        claim: Claim,
        committed: Committed | None,
        opened: paramiko.SFTPFile | None = None,
    ) -> TransferResult:
        """The object for this claim: an earlier attempt's, when it landed whole, else a copy."""
        metadata = {
            "source": self.source,
            "source-path": quote(remote_bytes(file.path)),
            "source-mtime": str(int(attrs.st_mtime or 0)),
        }
        result = self._landed_commit(committed, attrs)
        if result is None and claim.attempts > 1:
            # An attempt that died between its commit and the log: its copy stands.
            result = earlier_copy(self.store, file.object_name, metadata, attrs.st_size or 0)
        journal = self._journal(file, attrs, claim) if result is None else None
        if claim.attempts > 1:
            resuming = journal.previous.upload_id if journal and journal.previous else None
            self._abort_leftover_uploads(file.object_name, keep=resuming)
        if result is None:
            resumed_from = journal.previous.done_bytes if journal and journal.previous else 0
            result = copy_file(
                Copy(
                    self.pool.get(),
                    remote_bytes(file.remote_path),
                    self.store,
                    file.object_name,
                    metadata,
                    self.policy.byte_path(file.path),
                    self.tuning,
                    checksums=self.policy.server_checksums,
                    journal=journal,
                    heartbeat=self._heartbeat(claim, file, attrs.st_size or 0, resumed_from),
                    pace=self.bandwidth_cap,
                    attrs=attrs,  # this attempt's, from just before its claim
                    opened=opened,
                )
            )
        if journal is not None or claim.attempts > 1:  # the upload is done with, or left
            with suppress(psycopg.Error):  # a row left behind is given up later
                self.transfer_log.uploads.drop_upload(claim)
        return result

    def _resumable(self, file: _File, size: int) -> bool:
        """Whether a file of this size is copied resumably (see transfer/resume.py): big enough,
        stored as it is (a compressor's or gpg's state cannot be saved), streamed, and hashable
        resumably."""
        tuning = self.tuning
        return (
            bool(tuning.resume_min)
            and size >= max(tuning.resume_min, 2 * tuning.part_size)
            and self.policy.byte_path(file.path).resumable
            and not tuning.local_dir
            and resumable_hashing()
        )

    def _journal(self, file: _File, attrs, claim: Claim) -> Journal | None:
        """The claim's resumable upload: continuing an earlier claim's, when it recorded one
        for this very file (same size, mtime and key) that the bucket still has."""
        size, mtime = attrs.st_size or 0, int(attrs.st_mtime or 0)
        recorded = self.transfer_log.uploads.upload_of(claim) if claim.attempts > 1 else None
        previous, why = None, None
        if recorded is not None:
            progress = recorded.progress
            if (recorded.size_bytes, recorded.remote_mtime) != (size, mtime):
                why = "the file changed since its upload began"
            elif recorded.object_key != file.object_name or not self._resumable(file, size):
                why = "its destination or settings changed since its upload began"
            else:
                why = still_usable(self.store, file.object_name, progress)
            if why is None:
                previous = progress
                self.report(
                    f"{file.where}: resuming at {mib(progress.done_bytes)} of {mib(size)} "
                    f"({len(progress.etags)} parts uploaded by an earlier attempt)"
                )
            else:
                self.report(f"{file.where}: starting over, not resuming: {why}")
                with suppress(Exception):
                    self.store.abort_multipart(recorded.object_key, progress.upload_id)
                self.transfer_log.uploads.drop_upload(claim)
        if not self._resumable(file, size):
            return None
        return Journal(self.transfer_log.uploads, claim, file.object_name, size, mtime, previous)

    def _failed(self, file: _File, claim: Claim | None, me: str, exc: Exception) -> Outcome:
        """Record the failure in the log and report it, with advice on what to fix."""
        permanent = is_permanent(exc)
        if not permanent:
            self.pool.discard()  # the session may be broken: reconnect next time
        message = redact(
            f"{file.where}: {exc} {advice(exc, self.sftp_settings.names)}", self.secrets
        )
        self._record_failure(file.key, claim, message, me, permanent)
        return Outcome(
            file.key,
            "failed",
            message,
            {"error": message, "worker": me},
            permanent,
            changed=isinstance(exc, SourceChanged),
            committed=exc.committed if isinstance(exc, TransferFailed) else None,
        )

    def _transferred(
        self, file: _File, result: TransferResult, claim: Claim, me: str, action: str
    ) -> Outcome:
        stored = "" if result.stored_bytes is None else f", {result.stored_bytes} stored"
        if result.resumed_from:
            stored += f", resumed from byte {result.resumed_from}"
        return Outcome(
            file.key,
            "transferred",
            f"{file.where}: {result.size_bytes} bytes{stored} in {result.total_seconds:.2f} s "
            f"({result.mb_per_second:.1f} MB/s); source file {action}",
            {
                "outcome": "transferred",
                "bytes": result.size_bytes,
                "download_seconds": round(result.download_seconds, 3),
                "upload_seconds": round(result.upload_seconds, 3),
                "total_seconds": round(result.total_seconds, 3),
                "mb_per_second": round(result.mb_per_second, 2),
                "sha256": result.sha256,
                "verification": result.verification,
                "object_uri": self.store.uri(file.object_name),
                "worker": me,
                "attempt": claim.attempts,
                "source_file": action,
                **({} if result.stored_bytes is None else {"stored_bytes": result.stored_bytes}),
                # The object's own hash when a stage changed the bytes (decrypted, compressed);
                # sha256 is the remote file's.
                **({"stored_sha256": result.stored_sha256} if result.stored_sha256 else {}),
                # Bytes an earlier attempt had uploaded already: this one read the rest only.
                **({"resumed_from_bytes": result.resumed_from} if result.resumed_from else {}),
            },
        )

    def _after_copy(self, remote_path: str, copied, claim: Claim) -> str:
        """Keep, delete or archive the remote file (after_copy.py); what became of it is
        recorded in the log too (with the completion, when the file is kept)."""
        if self.policy.after_copy == "keep":
            return "kept"
        done = self.after_copy.apply(remote_path, copied)
        try:
            self.transfer_log.claims.record_source_action(claim, done)
        except psycopg.Error as exc:
            logger.warning("could not record the source action of claim %s: %s", claim.id, exc)
        return done

    def _landed_commit(self, committed: Committed | None, attrs) -> TransferResult | None:
        """An earlier attempt's object, if its commit landed and the file is still the same."""
        if committed is None or (committed.size, committed.source_mtime) != (
            attrs.st_size,
            str(int(attrs.st_mtime or 0)),
        ):
            return None
        return finish_commit(self.store, committed)

    def _complete(self, claim: Claim, result: TransferResult) -> None:
        """The object is in place: insist on recording it rather than copying it again."""
        kept = "kept" if self.policy.after_copy == "keep" else None
        for failures in range(1, self.retry.attempts + 1):
            try:
                return self.transfer_log.claims.complete(claim, result, source_action=kept)
            except psycopg.OperationalError:
                if failures == self.retry.attempts:
                    raise
                time.sleep(self.retry.delay(failures))

    def _abort_leftover_uploads(self, object_name: str, keep: str | None = None) -> None:
        """A previous attempt that died mid-upload left its multipart upload open; we hold the
        claim now, so any open upload of this key is a leftover, but the one we resume."""
        with suppress(Exception):
            for upload in self.store.list_multipart_uploads(object_name):
                if upload["Key"] == object_name and upload["UploadId"] != keep:
                    self.store.abort_multipart(object_name, upload["UploadId"])

    def _record_failure(
        self, key: str, claim: Claim | None, message: str, me: str, permanent: bool
    ) -> None:
        try:
            if claim is None:
                self.transfer_log.claims.fail_unclaimed(
                    self.source, key, message, worker_id=me, run_id=self.run_id, permanent=permanent
                )
            else:
                self.transfer_log.claims.fail(claim, message, permanent)
        except Exception as exc:  # the log itself is down: the claim goes stale, then is retried
            logger.warning("could not record the failure of %s in the transfer log: %s", key, exc)

    def _dead_holder(self, row: dict) -> str | None:
        """The run holding the file's claim (its log row), if Dagster reports it finished."""
        holder = row.get("run_id")
        if row.get("status") == "IN_PROGRESS" and holder and self.run_finished(holder):
            return holder
        return None

    def _not_claimed(self, file: _File, row: dict) -> Outcome:
        """Why the claim was refused (its log row says): another source copies to the same
        object (a failure), the file is copied already, or another worker holds it."""
        owner = self.transfer_log.claims.owner_of(file.object_name, self.source, file.key)
        if owner and owner["source"] != self.source:
            raise ObjectOfAnotherSource(
                f"the object is where source {owner['source']!r} copies its file of that name; "
                "it is left as it is, and this file is not copied over it"
            )
        if owner:
            raise KeyTaken(
                f"{display(decode_key(owner['filename']))} of this source is copied to the same "
                f"object ({owner['status']}): {display(file.path)} and it map to one key; the "
                "object is left as it is, and this file is not copied over it"
            )
        if row.get("status") == "COMPLETED":
            return Outcome(
                file.key,
                "skipped",
                f"{file.where}: already transferred and unchanged, skipped",
                {
                    "outcome": "skipped (already transferred, unchanged)",
                    "bytes": row["size_bytes"],
                    "sha256": (row["sha256"] or "").strip(),
                    "object_uri": self.store.uri(row["object_key"]),
                    "worker": row["worker_id"],
                },
            )
        return Outcome(
            file.key,
            "busy",
            f"{file.where}: being transferred by {row.get('worker_id')} (run {row.get('run_id')}), "
            "skipped here",
        )

    def _heartbeat(self, claim: Claim, file: _File, size: int, resumed_from: int):
        """Called with the bytes read so far as they stream: every heartbeat_seconds, the claim
        is refreshed with them, and the run's log says how far the copy got."""
        started = last = time.monotonic()

        def beat(done: int) -> None:
            nonlocal last
            if self.stopping.is_set():
                raise RunStopped(
                    f"the run stopped (terminated) at {mib(done)} of {mib(size)}: nothing of "
                    "this copy was committed. Rerun the partition, or let the sensor request it "
                    "again."
                )
            now = time.monotonic()
            if now - last < self.heartbeat_seconds:
                return
            last = now
            try:
                self.transfer_log.claims.heartbeat(claim, done)
            except psycopg.OperationalError as exc:  # the log restarts: keep copying
                logger.warning("heartbeat of claim %s not recorded: %s", claim.id, exc)
            rate = (done - resumed_from) / (now - started)
            left = f", about {duration((size - done) / rate)} left" if rate > 0 else ""
            self.report(
                f"{file.where}: {mib(done)} of {mib(size)} ({100 * done / max(size, 1):.0f}%), "
                f"{rate / MIB:.1f} MB/s{left}"
            )

        return beat


def _as_completed(futures: list[Future]) -> Iterator[Future]:
    """as_completed's order, waking every second: Dagster terminates a run by raising from its
    SIGINT handler, which runs in the main thread when it next runs Python, and a signal sent
    to the process may wake another thread; blocked without a time-out, the main thread would
    see it only once a file had finished."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
        yield from done


def _absolute(path: str) -> str:
    return path if path.startswith("/") else "/" + path
