"""A partner far away: the round trips a small file waits for, counted at a relay that delays
each direction (devstack/tcp_relay.py), as issue 23 asks: at most a few, whatever the link's
latency, since each costs a whole round trip."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from devstack.tcp_relay import TcpRelay
from sftp_minio_assets.sftp.client import HANDSHAKES_AT_ONCE, SFTPConnector, SFTPPool
from sftp_minio_assets.sftp.openssh import AutoConnector, SshChannel, round_trip
from sftp_minio_assets.sftp.reads import READ_WINDOW, read_chunks, window_for

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)


@pytest.fixture
def far(env):
    """The test's sshd behind a relay adding 5 ms each way."""
    relay = TcpRelay(env.stack.ssh.host, env.stack.ssh.port, delay=0.005)
    yield relay
    relay.close()


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_a_small_file_waits_on_two_round_trips(env, far, transport):
    """Its stat and its open, asked together before the claim; then its read and the check
    after it, asked together; its close is not waited for. (Six before issue 23: the stat, the
    open, the open file's own stat, the read, the check and the close each waited.)"""
    names = [f"{n}.csv" for n in range(6)]
    for name in names:
        env.write(name, b"id,amount\n" + b"1,2\n" * 4000)  # 16 KiB: one read
    pinned = dict(known_hosts_path=None, host_key_sha256=env.stack.ssh.host_key_sha256)
    worker = env.source(port=far.port, transport=transport, **pinned).worker()
    assert worker.transfer(names[0]).status == "transferred"  # the session opened
    turns = []
    for name in names[1:]:
        far.reset()
        outcome = worker.transfer(name)
        assert outcome.status == "transferred", outcome.message
        turns.append(far.turns)
    # Now and then the client also sends SSH's window adjustment right after data arrives,
    # which the relay cannot tell from a request: one file in a few may show a turn more.
    assert sorted(turns)[len(turns) // 2] == 2 and max(turns) <= 3, turns


def test_a_far_read_keeps_more_requests_in_flight_a_near_one_does_not(env):
    """16 reads of 255 KiB in flight carry 100 MB/s at 40 ms: far, the window grows once the
    first answer has shown the wait. Counted by the requests sent (pace is called before each)
    by the time the second chunk arrives: the window then, plus the first chunk's."""
    data = os.urandom(24 * 1024 * 1024)
    path = str(env.write("far.bin", data))
    pinned = dict(known_hosts_path=None, host_key_sha256=env.stack.ssh.host_key_sha256)
    relay = TcpRelay(env.stack.ssh.host, env.stack.ssh.port, delay=0.020)
    in_flight = {}
    try:
        for name, port in (("near", env.stack.ssh.port), ("far", relay.port)):
            sftp = env.source(port=port, transport="paramiko", **pinned).pool.get()
            sent: list[int] = []
            with sftp.open(path, "rb") as f:
                chunks = read_chunks(f, len(data), pace=sent.append)
                read = [next(chunks), next(chunks)]
                in_flight[name] = len(sent) - 1
                assert b"".join([*read, *chunks]) == data
            assert sftp.stat(path).st_size == len(data)  # every answer consumed: in step
    finally:
        relay.close()
    # The wait is measured once the first requests are sent: a little under the round trip.
    assert in_flight["far"] >= window_for(0.030, 255 * 1024) > READ_WINDOW, in_flight
    assert in_flight["near"] < in_flight["far"], in_flight


def test_auto_takes_openssh_near_and_paramiko_far(env):
    """OpenSSH's client reads at most its 2 MiB window per round trip: beyond 10 ms away, auto
    takes paramiko. The distance is measured once per server and process, by a connection of
    its own that is closed before the session's opens (the session budget counts on it)."""
    pinned = dict(known_hosts_path=None, host_key_sha256=env.stack.ssh.host_key_sha256)
    far = TcpRelay(env.stack.ssh.host, env.stack.ssh.port, delay=0.010)
    try:
        transports = {}
        for name, port in (("near", env.stack.ssh.port), ("far", far.port)):
            pool = SFTPPool(AutoConnector(env.connection(port=port, **pinned).settings))
            sftp = pool.get()
            assert sftp.normalize(".")
            transports[name] = type(sftp.get_channel())
            pool.close()
        assert far.connections == 2  # the probe, then the session
        assert transports["near"] is SshChannel and transports["far"] is not SshChannel
        assert round_trip(env.stack.ssh.host, far.port) >= 0.020
        assert round_trip(env.stack.ssh.host, env.stack.ssh.port) < 0.010
    finally:
        far.close()


class CountingConnector(SFTPConnector):
    """The real connector, counting the handshakes it is in at once."""

    def __init__(self, settings):
        super().__init__(settings)
        self.lock, self.now, self.most = threading.Lock(), 0, 0

    def connect(self):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return super().connect()
        finally:
            with self.lock:
                self.now -= 1


def test_sessions_opened_at_once_shake_hands_four_at_a_time(env, far):
    """A run opens MAX_WORKERS (16) sessions at its start; OpenSSH's default MaxStartups drops
    connections at random beyond 10 not yet logged in."""
    pinned = dict(known_hosts_path=None, host_key_sha256=env.stack.ssh.host_key_sha256)
    connector = CountingConnector(env.connection(port=far.port, **pinned).settings)
    pool = SFTPPool(connector)
    together = threading.Barrier(12)  # 12 threads, each with a session of its own

    def session(_):
        together.wait()
        return pool.get().normalize(".")

    with ThreadPoolExecutor(12) as threads:
        sessions = list(threads.map(session, range(12)))
    pool.close()
    assert len(sessions) == 12 and far.connections == 12
    assert connector.most == HANDSHAKES_AT_ONCE == 4
