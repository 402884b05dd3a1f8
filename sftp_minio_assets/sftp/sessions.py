"""The session budget per SFTP server: at most `max_sessions` SSH connections open to it at
once, counted across every run, sensor tick and machine that shares the transfer log.

Partner servers cap sessions per account or per address, and refuse logins beyond the cap:
refused logins look like failures. So every SSH connection the project opens (sftp.SFTPPool)
first takes a lease, a row of `sftp_sessions` (its SQL in db/leases.py), and gives it back
when it closes. A lease is granted in one transaction, under a lock on the server's name, only
while fewer than max_sessions unexpired leases exist for that server; one thread per process
renews the process's leases; a lease nobody renews (its process was killed, its machine lost)
expires after LEASE_SECONDS and its slot is free again. A process stalled for longer than that
(or cut from the database) loses its leases, and the budget can be exceeded until its
sessions close: leases are cooperative, and count only this project's sessions.

Plain Python, no Dagster; without max_sessions there is no budget and no database traffic.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from typing import Protocol

import psycopg

from ..core.identity import gone_from_here, worker_id

logger = logging.getLogger(__name__)


class SessionLeases(Protocol):
    """Where the leases live: the transfer log's sftp_sessions table (db.leases), handed
    in by whoever builds the budget."""

    def grant(
        self,
        server: str,
        *,
        source: str,
        holder: str,
        purpose: str,
        max_sessions: int,
        lease_seconds: float,
    ) -> tuple[int | None, list[dict]]: ...

    def renew(self, ids: list[int], lease_seconds: float) -> set[int]: ...

    def release(self, lease: int) -> None: ...

    def close(self) -> None: ...


# A lease not renewed for this long is a dead process's: its slot is free again.
LEASE_SECONDS = 60.0
# Renewals per lease lifetime: a renewal may fail a few times (a database restarting) before
# the lease expires.
RENEWALS_PER_LEASE = 4
# A waiting worker asks again after this long, doubling up to the longest.
FIRST_POLL_SECONDS = 0.2
LONGEST_POLL_SECONDS = 2.0


class SessionsBusy(Exception):
    """Every session to the server stayed in use for as long as the caller could wait."""


def server_of(host: str, port: int) -> str:
    """The server a budget counts sessions to: `host:port`, the host as the settings spell it.

    Not per account (user@host:port): a partner caps sessions per account or per client
    address, and counting every account's sessions together stays within both caps, where
    counting per account would overrun a cap per address as soon as two sources log in to the
    same server with different accounts. The price: sources with different accounts on a
    server capped per account share one budget. Two spellings of one server (a name and its
    address) are two budgets: spell it the same way in every source.
    """
    return f"{host.lower()}:{port}"


class SessionBudget:
    """One source's share of a server's budget: acquire() a lease before opening a session,
    release() it after closing the session."""

    def __init__(
        self,
        leases: SessionLeases,
        server: str,
        source: str,
        max_sessions: int,
        lease_seconds: float = LEASE_SECONDS,
    ):
        self.leases = leases
        self.server = server
        self.source = source
        self.max_sessions = max_sessions
        self.lease_seconds = lease_seconds
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def acquire(self, purpose: str, patience: float | None = None) -> int:
        """A lease on one session to the server (its id), once one is free: waiting is not a
        failure. patience: seconds to wait at most (None: as long as it takes), after which
        SessionsBusy says who holds the sessions."""
        deadline = None if patience is None else time.monotonic() + patience
        poll = FIRST_POLL_SECONDS
        waiting = False
        while True:
            lease, holders = self.leases.grant(
                self.server,
                source=self.source,
                holder=worker_id(),  # as the transfer log's worker_id names a worker
                purpose=purpose,
                max_sessions=self.max_sessions,
                lease_seconds=self.lease_seconds,
            )
            if lease is not None:
                with self._lock:
                    self._held.add(lease)
                _keep_renewed(self)
                return lease
            # The leases of processes of this host that were killed (kill -9, OOM) are freed at
            # once, not after LEASE_SECONDS: their connections closed with them.
            dead = [h for h in holders if gone_from_here(h["holder"])]
            if dead and self._free(dead):
                continue
            busy = f"{len(holders)} of {self.max_sessions} in use{_by(holders)}"
            if deadline is not None and time.monotonic() >= deadline:
                raise SessionsBusy(
                    f"no session to {self.server} came free in {patience:g} s: {busy}"
                )
            if not waiting:
                logger.warning("waiting for a session to %s: %s", self.server, busy)
                waiting = True
            nap = poll * random.uniform(0.5, 1.5)  # waiters of many processes out of step
            if deadline is not None:
                nap = min(nap, max(0.0, deadline - time.monotonic()))
            time.sleep(nap)
            poll = min(LONGEST_POLL_SECONDS, poll * 2)

    def _free(self, dead: list[dict]) -> bool:
        """Release the leases of dead processes; whether it could."""
        try:
            for holder in dead:
                self.leases.release(holder["id"])
        except psycopg.Error:
            return False
        logger.info(
            "freed %d session leases to %s of processes no longer running: %s",
            len(dead),
            self.server,
            _by(dead).removeprefix(" by "),
        )
        return True

    def release(self, lease: int) -> None:
        """Give the lease back. Never raises: a lease that cannot be deleted (the database is
        away) is no longer renewed, and expires."""
        with self._lock:
            self._held.discard(lease)
        try:
            self.leases.release(lease)
        except psycopg.Error as exc:
            logger.warning(
                "session lease %s to %s not released (%s); it expires within %g s",
                lease,
                self.server,
                exc,
                self.lease_seconds,
            )

    def renew(self) -> None:
        """Push back the expiry of every lease held; say so of any that expired meanwhile."""
        with self._lock:
            held = list(self._held)
        if not held:
            return
        try:
            live = self.leases.renew(held, self.lease_seconds)
        except psycopg.Error as exc:
            logger.warning("session leases to %s not renewed: %s", self.server, exc)
            return
        with self._lock:
            lost = (set(held) - live) & self._held  # not those released meanwhile
            self._held -= lost
        if lost:
            logger.warning(
                "%d session leases to %s expired before they were renewed (this process "
                "stalled, or lost the database, for more than %g s): their slots may have "
                "gone to others, and the server may see more than %d sessions until these close",
                len(lost),
                self.server,
                self.lease_seconds,
                self.max_sessions,
            )

    def close(self) -> None:
        self.leases.close()


def _by(holders: list[dict]) -> str:
    """by whom, for messages: the first few holders."""
    shown = [f"{h['holder']} ({h['purpose']}, source {h['source']})" for h in holders[:3]]
    more = f" and {len(holders) - 3} more" if len(holders) > 3 else ""
    return f" by {', '.join(shown)}{more}" if shown else ""


# The process's budgets that hold leases, renewed by one thread.
_budgets: weakref.WeakSet[SessionBudget] = weakref.WeakSet()
_renewer: threading.Thread | None = None
_renewer_lock = threading.Lock()
_wake = threading.Event()


def _keep_renewed(budget: SessionBudget) -> None:
    global _renewer
    with _renewer_lock:
        if budget not in _budgets:
            _budgets.add(budget)
            _wake.set()  # its leases may be shorter than the renewer's current nap
        if _renewer is None:
            _renewer = threading.Thread(target=_renew_forever, name="session-leases", daemon=True)
            _renewer.start()


def _renew_forever() -> None:
    while True:
        with _renewer_lock:
            budgets = list(_budgets)
        nap = min((b.lease_seconds for b in budgets), default=LEASE_SECONDS) / RENEWALS_PER_LEASE
        _wake.wait(nap)
        _wake.clear()
        for budget in budgets:
            budget.renew()
