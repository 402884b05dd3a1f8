"""What a worker does for one file: claim it in the log, copy it, record how it went.

Plain Python, no Dagster: the asset runs `Worker.transfer` on a thread pool, one call per file.
"""

from __future__ import annotations

import os
import posixpath
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

from .errors import advice, redact
from .s3 import ObjectStore, object_key
from .sftp import SFTPPool, SFTPSettings
from .transfer import Tuning, copy_file
from .transfer_log import Claim, TransferLog

HEARTBEAT_SECONDS = 30.0


@dataclass(frozen=True)
class Outcome:
    path: str
    # busy: another worker holds the file right now; its run reports it.
    status: Literal["transferred", "skipped", "busy", "failed"]
    message: str
    metadata: dict[str, object] = field(default_factory=dict)


def worker_id() -> str:
    """host:pid:thread, as the seed's per-worker logs named them."""
    name = threading.current_thread().name
    return f"{socket.gethostname()}:{os.getpid()}:{name}"[:100]


class Worker:
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
    ):
        self.source = source
        self.sftp_settings = sftp_settings
        self.pool = sftp_pool
        self.store = store
        self.log = transfer_log
        self.tuning = tuning
        self.run_id = run_id
        self.secrets = secrets

    def transfer_many(self, paths: list[str], max_workers: int) -> Iterator[Outcome]:
        """Outcomes in the order the files finish, max_workers at a time."""
        with ThreadPoolExecutor(max_workers, thread_name_prefix="transfer") as pool:
            futures = [pool.submit(self.transfer, path) for path in paths]
            for future in as_completed(futures):
                yield future.result()

    def transfer(self, path: str) -> Outcome:
        remote_path = posixpath.join(self.sftp_settings.root, path)
        key = object_key(self.store.settings.prefix, self.source, path)
        where = f"{self.sftp_settings.server}{_absolute(remote_path)} -> {self.store.uri(key)}"
        me = worker_id()
        claim: Claim | None = None
        try:
            attrs = self.pool.get().stat(remote_path)
            claim = self.log.claim(
                self.source,
                path,
                size_bytes=attrs.st_size or 0,
                remote_mtime=int(attrs.st_mtime or 0),
                object_key=key,
                worker_id=me,
                run_id=self.run_id,
            )
            if claim is None:
                return self._not_claimed(path, where)
            result = copy_file(
                self.pool.get(),
                remote_path,
                self.store,
                key,
                metadata={
                    "source": self.source,
                    "source-path": quote(path),
                    "source-mtime": str(int(attrs.st_mtime or 0)),
                },
                tuning=self.tuning,
                heartbeat=self._heartbeat(claim),
            )
            self.log.complete(claim, result)
        except Exception as exc:
            if not isinstance(exc.__cause__ or exc, (FileNotFoundError, PermissionError)):
                self.pool.discard()  # the session may be broken: reconnect next time
            message = redact(f"{where}: {exc} {advice(exc)}", self.secrets)
            self._record_failure(path, claim, message, me)
            return Outcome(path, "failed", message, {"error": message, "worker": me})
        return Outcome(
            path,
            "transferred",
            f"{where}: {result.size_bytes} bytes in {result.total_seconds:.2f} s "
            f"({result.mb_per_second:.1f} MB/s)",
            {
                "outcome": "transferred",
                "bytes": result.size_bytes,
                "download_seconds": round(result.download_seconds, 3),
                "upload_seconds": round(result.upload_seconds, 3),
                "total_seconds": round(result.total_seconds, 3),
                "mb_per_second": round(result.mb_per_second, 2),
                "sha256": result.sha256,
                "object_uri": self.store.uri(key),
                "worker": me,
                "attempt": claim.attempts,
            },
        )

    def _record_failure(self, path: str, claim: Claim | None, message: str, me: str) -> None:
        if claim is None:
            self.log.fail_unclaimed(self.source, path, message, worker_id=me, run_id=self.run_id)
        else:
            self.log.fail(claim, message)

    def _not_claimed(self, path: str, where: str) -> Outcome:
        row = self.log.get(self.source, path) or {}
        if row.get("status") == "COMPLETED":
            return Outcome(
                path,
                "skipped",
                f"{where}: already transferred and unchanged, skipped",
                {
                    "outcome": "skipped (already transferred, unchanged)",
                    "bytes": row["size_bytes"],
                    "sha256": (row["sha256"] or "").strip(),
                    "object_uri": self.store.uri(row["object_key"]),
                    "worker": row["worker_id"],
                },
            )
        return Outcome(
            path,
            "busy",
            f"{where}: being transferred by {row.get('worker_id')} (run {row.get('run_id')}), "
            "skipped here",
            {},
        )

    def _heartbeat(self, claim: Claim):
        last = time.monotonic()

        def beat() -> None:
            nonlocal last
            if time.monotonic() - last >= HEARTBEAT_SECONDS:
                self.log.heartbeat(claim)
                last = time.monotonic()

        return beat


def _absolute(path: str) -> str:
    return path if path.startswith("/") else "/" + path
