"""The session budget per SFTP server (sessions.py): never more than max_sessions SSH sessions
open to a server, whichever process asks, counted by the kernel rather than by the project's
own table; a killed process's slot comes back; the sensor says when the budget holds a source
back; the statistics show the sessions in use."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from sftp_minio_assets.defs.resources import LISTING_PATIENCE_SECONDS
from sftp_minio_assets.defs.stats import transfer_stats
from sftp_minio_assets.sftp.sessions import SessionBudget, SessionsBusy, server_of
from sftp_minio_assets_tests.support import (
    PROJECT,
    enable_versioning,
    requested,
    tick,
    wait_for,
    writes_per_key,
)

MIB = 1024 * 1024


class SessionMeter:
    """The most TCP connections established to the sshd port at once, sampled from the
    kernel's table every few milliseconds; connections open before it started (other tests')
    are left out."""

    def __init__(self, port: int):
        self.port = port
        self.most = 0
        self._before = self._connections()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _connections(self) -> set[str]:
        """Server-side ends (local port = sshd's) of established connections, by peer."""
        found = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with suppress(FileNotFoundError):
                for line in Path(table).read_text().splitlines()[1:]:
                    local, peer, state = line.split()[1:4]
                    if state == "01" and int(local.rsplit(":", 1)[1], 16) == self.port:
                        found.add(peer)
        return found

    def now(self) -> int:
        return len(self._connections() - self._before)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.most = max(self.most, self.now())
            time.sleep(0.003)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


def leases(env) -> list[dict]:
    with env.log.db.connection().execute("SELECT * FROM sftp_sessions ORDER BY id") as cursor:
        return cursor.fetchall()


def budget(env, max_sessions: int, lease_seconds: float = 60) -> SessionBudget:
    """A budget on the test's server, as a source with that max_sessions has."""
    ssh = env.stack.ssh
    return SessionBudget(
        env.log.sessions.leases(), server_of(ssh.host, ssh.port), "other", max_sessions,
        lease_seconds,
    )  # fmt: skip


# --- on the real servers ---------------------------------------------------------------------


@pytest.mark.integration
def test_three_runs_in_their_own_processes_never_open_more_sessions_than_the_budget(env, tmp_path):
    enable_versioning(env)
    paths = [f"budget/{i:02d}.bin" for i in range(12)]
    for path in paths:
        env.write(path, os.urandom(2 * MIB))
    config = {
        name: resource.model_dump()
        for name, resource in env.resources(sftp={"max_sessions": 2}).items()
    }
    spec = json.dumps({"resources": config, "keys": paths})
    logs = [tmp_path / f"run-{n}.log" for n in range(3)]
    with SessionMeter(env.stack.ssh.port) as meter:
        # This process holds both sessions while the runs start: all three must wait, then
        # share the two slots, each with two threads wanting one.
        held = [env.source(max_sessions=2).pool for _ in range(2)]
        for pool in held:
            pool.get()
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "sftp_minio_assets_tests.run_partitions", spec],
                cwd=PROJECT,
                stdout=subprocess.PIPE,
                stderr=open(log, "w"),  # noqa: SIM115
                text=True,
            )
            for log in logs
        ]
        wait_for(
            lambda: all("waiting for a session to" in log.read_text() for log in logs),
            timeout=180,
            what="each run to wait for a session",
        )
        assert meter.most == 2
        for pool in held:
            pool.close()
        outputs = [run.communicate(timeout=300)[0] for run in runs]

    for output, log in zip(outputs, logs, strict=True):
        assert output.strip(), log.read_text()[-3000:]
        assert json.loads(output.strip().splitlines()[-1])["success"], log.read_text()[-3000:]
    assert meter.most == 2, f"{meter.most} SSH sessions at once with max_sessions 2"
    rows = env.rows()
    assert {(rows[p]["status"], rows[p]["attempts"]) for p in paths} == {("COMPLETED", 1)}
    assert {rows[p]["worker_id"].split(":")[1] for p in paths} <= {str(r.pid) for r in runs}
    assert writes_per_key(env) == {f"default/{p}": 1 for p in paths}
    assert leases(env) == []  # every run gave its sessions back


@pytest.mark.integration
def test_the_session_of_a_process_killed_with_kill_9_is_free_again_at_once(env):
    """Its connection closed with it: on the same host, its lease is freed as soon as a worker
    waits for the slot (a lease of another host's process expires, below)."""
    spec = {
        "connection": env.connection().model_dump(),
        "db_url": env.db_url,
        "max_sessions": 1,
        "lease_seconds": 60,
    }
    holder = subprocess.Popen(
        [sys.executable, "-m", "sftp_minio_assets_tests.hold_session", json.dumps(spec)],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        [lease] = leases(env)
        assert lease["holder"].split(":")[1] == str(holder.pid)
        mine = budget(env, 1, lease_seconds=60)
        # While it lives, its lease is renewed: the slot stays taken.
        with pytest.raises(SessionsBusy) as busy:
            mine.acquire("transfer", patience=3)
        assert f"1 of 1 in use by {lease['holder']} (transfer, source default)" in str(busy.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    started = time.monotonic()
    granted = mine.acquire("transfer", patience=30)
    assert time.monotonic() - started < 1, "not freed at once: waited for the lease to expire"
    assert [row["id"] for row in leases(env)] == [granted]
    mine.release(granted)
    assert leases(env) == []


@pytest.mark.integration
def test_the_lease_of_another_hosts_process_is_free_again_once_it_expires(env):
    """A process there cannot be seen from here: its lease, no longer renewed, expires."""
    mine = budget(env, 1, lease_seconds=2)
    theirs = mine.acquire("transfer")
    with psycopg.connect(env.db_url, autocommit=True) as conn:  # as another machine's would
        conn.execute(
            "UPDATE sftp_sessions SET holder = 'elsewhere:1:transfer_0' WHERE id = %s", [theirs]
        )
    mine._held.discard(theirs)  # nobody renews it any more
    started = time.monotonic()
    granted = mine.acquire("transfer", patience=30)
    assert 1 < time.monotonic() - started < 2 + 3  # its lease's life, and a poll or two
    assert [row["id"] for row in leases(env)] == [granted]  # the dead lease is purged
    mine.release(granted)


@pytest.mark.integration
def test_a_tick_whose_server_budget_stays_full_skips_saying_who_holds_it(env, instance):
    env.write("a.csv", b"a")
    busy = env.source(max_sessions=1).pool
    busy.get()  # a run of the source holds the only session
    started = time.monotonic()
    held_back = tick(env, instance, max_sessions=1)
    assert time.monotonic() - started >= LISTING_PATIENCE_SECONDS
    assert held_back.run_requests == []
    message = held_back.skip_reason.skip_message
    assert message.startswith("source default held back: no session to 127.0.0.1:")
    assert "1 of 1 in use by" in message and "(transfer, source default)" in message
    assert "listed again at the next tick" in message

    busy.close()
    assert requested(tick(env, instance, max_sessions=1), instance) == ["a.csv"]
    assert leases(env) == []  # the tick's listing gave its session back


@pytest.mark.integration
def test_statistics_show_the_sessions_in_use_per_server(env, instance):
    pool = env.source(max_sessions=3).pool
    pool.get()
    listing = threading.Thread(target=lambda: pool.get(purpose="listing"))
    listing.start()
    listing.join()
    result = dg.materialize([transfer_stats], resources=env.resources(), instance=instance)
    metadata = result.asset_materializations_for_node("transfer_stats")[0].metadata
    assert metadata["sftp_sessions"].value == 2
    table = metadata["sessions_per_server"].value
    server = server_of(env.stack.ssh.host, env.stack.ssh.port)
    [row] = [line for line in table.splitlines() if server in line]
    assert [cell.strip() for cell in row.strip("|").split("|")] == [server, "2", "1", "default"]
    pool.close()
    result = dg.materialize([transfer_stats], resources=env.resources(), instance=instance)
    assert (
        result.asset_materializations_for_node("transfer_stats")[0].metadata["sftp_sessions"].value
        == 0
    )
