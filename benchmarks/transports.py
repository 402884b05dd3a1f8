"""The SSH transport: one file read over SFTP and thrown away, by each way of doing SSH.

    python -m benchmarks.transports [--rounds 3] [--size-mib 1024] [--extra DIR]

Starts only the local stack's SSH server (devstack's SshServer: OpenSSH sshd, internal-sftp, a
free loopback port), writes one file of random bytes into its root, then runs the tools below
in turn, round after round. Each run is a process of its own: it connects, checks the host key
against the server's known_hosts file, reads the whole file and drops the bytes (the "+ sha256"
rows hash them, as the project's copy does).

- OpenSSH's `sftp` (`get FILE /dev/null`), with its default cipher (chacha20-poly1305) and with
  aes128-gcm, the cipher the project asks for: the reference.
- The project's two transports (sftp/openssh.connector_for), open, read_chunks: paramiko's, and
  the default where ssh is installed, openssh: paramiko's SFTPClient over an `ssh -s sftp` child
  process (sftp/openssh.py), OpenSSH doing the SSH.
- A minimal SFTP v3 reader over the same child (read_ssh_sftp3): what paramiko's framing costs.
- asyncssh's read_parallel, when importable. It is not a project dependency: --extra DIR adds
  a `pip install --target DIR asyncssh` to the path.

The table gives medians: MB/s (10^6 bytes per second of the run's wall time, its start,
imports and handshake included), the CPU seconds per GiB of the client process and its children
(the `ssh` child; RUSAGE_CHILDREN around each run), and of the sshd processes that served the
connection (SshdMeter). Linux only. On a shared machine, read the CPU columns first: wall times
move with the load, CPU per GiB much less.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import importlib.util
import io
import json
import os
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from devstack.local_stack import SshServer

ROOT = Path(__file__).resolve().parents[1]
# GCM first, as the project's paramiko path asks; chacha20 (OpenSSH's default) costs more CPU on
# both ends on AES-NI hardware.
CIPHERS = (
    "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
    "aes128-ctr,aes256-ctr"
)
WINDOW, REQUEST = 16, 255 * 1024  # the project's read_chunks defaults (client.py)

PR_SET_CHILD_SUBREAPER = 36  # prctl(2)
Run = tuple[float, float, float]  # wall seconds, client CPU seconds, sshd CPU seconds


@dataclass(frozen=True)
class Tool:
    label: str
    client: str  # "sftp": OpenSSH's sftp; otherwise a key of CLIENTS, run by this module
    sha256: bool = False
    cipher: str | None = None  # sftp's -c


def strict_ssh_options(target: dict[str, Any]) -> list[str]:
    """OpenSSH checks the host key against the server's known_hosts file only, and never asks."""
    options = {
        "UserKnownHostsFile": target["known_hosts"],
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "CheckHostIP": "no",
        "UpdateHostKeys": "no",
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "IdentityFile": target["key"],
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "ClearAllForwardings": "yes",
        "ConnectTimeout": "30",
        "ServerAliveInterval": "15",
        "ServerAliveCountMax": "4",
        "LogLevel": "ERROR",
    }
    return ["-F", "none", *(arg for k, v in options.items() for arg in ("-o", f"{k}={v}"))]


# --- the clients, each run in a process of its own -------------------------------------------


def _drain_paramiko(sftp: Any, path: str, sha256: bool) -> int:
    from sftp_minio_assets.sftp.reads import read_chunks

    digest = hashlib.sha256() if sha256 else None
    read = 0
    with sftp.open(path, "rb") as f:
        for chunk in read_chunks(f, f.stat().st_size):
            read += len(chunk)
            if digest:
                digest.update(chunk)
    return read


def _settings(target: dict[str, Any], transport: str) -> Any:
    from sftp_minio_assets.sftp.client import SFTPSettings

    return SFTPSettings(
        host=target["host"],
        port=target["port"],
        username=target["user"],
        private_key=target["key"],
        known_hosts_path=target["known_hosts"],
        transport=transport,
    )


def read_project(transport: str) -> Callable[[dict[str, Any], bool], int]:
    """The project's connector for the transport (sftp/openssh.connector_for), read_chunks."""

    def read(target: dict[str, Any], sha256: bool) -> int:
        from sftp_minio_assets.sftp.openssh import connector_for

        sftp = connector_for(_settings(target, transport)).connect()
        try:
            return _drain_paramiko(sftp, target["path"], sha256)
        finally:
            sftp.get_channel().get_transport().close()

    return read


def read_ssh_sftp3(target: dict[str, Any], sha256: bool) -> int:
    """INIT, OPEN, a window of READs, CLOSE, over the openssh transport's `ssh` child; OpenSSH's
    server answers in order."""
    from sftp_minio_assets.sftp.openssh import OpenSSHConnector

    pipes = OpenSSHConnector(_settings(target, "openssh")).channel()
    assert pipes.process.stdout is not None
    # read(n) of a BufferedReader blocks until it has n bytes.
    stream = io.BufferedReader(io.FileIO(pipes.process.stdout.fileno(), "rb", False), 1 << 20)
    channel = SimpleNamespace(send=pipes.send, recv=stream.read, close=pipes.close)
    header = struct.Struct(">IBI")  # length, type, request id (INIT: the version)
    digest = hashlib.sha256() if sha256 else None

    def request(kind: int, number: int, payload: bytes = b"") -> bytes:
        return header.pack(len(payload) + 5, kind, number) + payload

    def send(data: bytes) -> None:
        while data:
            data = data[channel.send(data) :]

    def reply(number: int) -> tuple[int, bytes]:
        length, kind, got = header.unpack(channel.recv(9))
        if kind == 2:  # VERSION: no request id, the extensions follow
            return kind, channel.recv(length - 5)
        if got != number:
            raise OSError(f"reply {got} to request {number}")
        if kind == 103:  # DATA: the bytes without their length prefix
            return kind, channel.recv(struct.unpack(">I", channel.recv(4))[0])
        return kind, channel.recv(length - 5)

    try:
        send(request(1, 3))
        reply(0)
        path = target["path"].encode()
        send(request(3, 0, struct.pack(">I", len(path)) + path + struct.pack(">II", 1, 0)))
        kind, body = reply(0)
        if kind != 102:
            message = body[8 : 8 + struct.unpack_from(">I", body, 4)[0]].decode(errors="replace")
            raise OSError(f"cannot open {target['path']}: {message}")
        handle = body  # the handle with its length prefix: as every request sends it
        size, offset, sent, received, read = target["size"], 0, 1, 1, 0
        while received < sent or offset < size:
            batch = []
            while offset < size and sent - received < WINDOW:
                length = min(REQUEST, size - offset)
                batch.append(request(5, sent, handle + struct.pack(">QI", offset, length)))
                sent, offset = sent + 1, offset + length
            send(b"".join(batch))
            kind, data = reply(received)
            received += 1
            if kind != 103:
                raise OSError(f"read {received - 1}: reply type {kind}")
            read += len(data)
            if digest:
                digest.update(data)
        send(request(4, sent, handle))
        reply(sent)
        return read
    finally:
        channel.close()


def read_asyncssh(target: dict[str, Any], sha256: bool) -> int:
    """read_parallel: blocks arrive out of order, so no sha256 row."""
    import asyncio

    import asyncssh

    async def read() -> int:
        async with (
            asyncssh.connect(
                target["host"],
                target["port"],
                username=target["user"],
                client_keys=[target["key"]],
                known_hosts=target["known_hosts"],
                agent_path=None,
                config=[],
                encryption_algs=CIPHERS.split(","),
            ) as connection,
            connection.start_sftp_client() as sftp,
            sftp.open(target["path"], "rb", block_size=REQUEST, max_requests=WINDOW) as f,
        ):
            read = 0
            async for _, chunk in await f.read_parallel(target["size"], 0):
                read += len(chunk)
            return read

    return asyncio.run(read())


CLIENTS: dict[str, Callable[[dict[str, Any], bool], int]] = {
    "paramiko": read_project("paramiko"),
    "ssh-paramiko": read_project("openssh"),
    "ssh-sftp3": read_ssh_sftp3,
    "asyncssh": read_asyncssh,
}

TOOLS = (
    Tool("OpenSSH sftp, default cipher (chacha20-poly1305)", "sftp"),
    Tool("OpenSSH sftp, aes128-gcm", "sftp", cipher="aes128-gcm@openssh.com"),
    Tool("transport: paramiko (SFTPConnector) + read_chunks", "paramiko"),
    Tool("transport: paramiko + sha256", "paramiko", sha256=True),
    Tool(
        "transport: openssh, the default (ssh child, paramiko SFTPClient) + read_chunks",
        "ssh-paramiko",
    ),
    Tool("transport: openssh + sha256", "ssh-paramiko", sha256=True),
    Tool("ssh child + minimal SFTP v3 reader", "ssh-sftp3"),
    Tool("asyncssh read_parallel", "asyncssh"),
)


def run_client(name: str, target: dict[str, Any], sha256: bool) -> None:
    read = CLIENTS[name](target, sha256)
    if read != target["size"]:
        sys.exit(f"{name}: read {read} of {target['size']} bytes")


# --- measuring ---------------------------------------------------------------------------------


def command(tool: Tool, target: dict[str, Any], extra: str | None) -> tuple[list[str], bytes]:
    """The run's argv and its standard input."""
    if tool.client == "sftp":
        cipher = ["-c", tool.cipher] if tool.cipher else []
        destination = f"{target['user']}@{target['host']}"
        argv = ["sftp", *strict_ssh_options(target), *cipher, "-P", str(target["port"])]
        return [*argv, "-b", "-", destination], f'get "{target["path"]}" /dev/null\n'.encode()
    argv = [sys.executable, "-m", "benchmarks.transports", "--client", tool.client]
    argv += ["--target", json.dumps(target), *(["--sha256"] if tool.sha256 else [])]
    return argv + (["--extra", extra] if extra else []), b""


class SshdMeter:
    """CPU seconds of the sshd processes that served the connections so far.

    The listener reaps each connection's first process, but the process that runs
    internal-sftp outlives its parent and would be reaped by PID 1, its CPU lost. This process
    becomes their subreaper instead, reaps them and counts their CPU.
    """

    def __init__(self, server: SshServer) -> None:
        self.server = server
        self.orphans = 0.0
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def total(self) -> float:
        """Waits for the connections to end, then counts (up to 10 s)."""
        listener = self.server.pid
        assert listener is not None, "sshd has stopped"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            orphans = [pid for pid in _children(os.getpid()) if pid != listener]
            for pid in orphans:
                reaped, _, usage = os.wait4(pid, os.WNOHANG)
                if reaped:
                    self.orphans += usage.ru_utime + usage.ru_stime
            if not orphans and not _children(listener):
                break
            time.sleep(0.02)
        stat = Path(f"/proc/{listener}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # cutime, cstime: its reaped children
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK") + self.orphans


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += map(int, (task / "children").read_text().split())
    return found


def measure(tool: Tool, sshd: SshdMeter, target: dict[str, Any], extra: str | None) -> Run:
    argv, stdin = command(tool, target, extra)
    sshd_before = sshd.total()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, input=stdin, capture_output=True, cwd=ROOT, timeout=900)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{tool.label} failed ({done.returncode}):\n{done.stderr.decode()}")
    client = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, client, sshd.total() - sshd_before


def table(runs: dict[str, list[Run]], skipped: dict[str, str], size: int) -> str:
    gib = size / (1 << 30)
    lines = [
        "| tool | MB/s (wall) | client CPU s/GiB | sshd CPU s/GiB |",
        "|---|---|---|---|",
    ]
    for tool in TOOLS:
        label = tool.label
        if label in skipped:
            lines.append(f"| {label} | {skipped[label]} | | |")
            continue
        seconds, client, sshd = (statistics.median(run[i] for run in runs[label]) for i in range(3))
        lines.append(
            f"| {label} | {size / seconds / 1e6:.0f} | {client / gib:.2f} | {sshd / gib:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024, help="the file's size")
    parser.add_argument("--extra", help="a directory of optional clients (pip --target)")
    parser.add_argument("--client", choices=sorted(CLIENTS), help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--sha256", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.extra:
        sys.path.append(args.extra)  # after the project's packages: those win
    if args.client:
        run_client(args.client, json.loads(args.target), args.sha256)
        return
    # Stopped by a signal, the server stops and its directory goes too (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="sftp-minio-stack-transports-"))
    base.chmod(0o755)  # the SFTP user reaches its root and its authorized_keys through it
    server = SshServer(base)
    try:
        server.start()
        meter = SshdMeter(server)
        size = args.size_mib << 20
        path = server.root / "transports.bin"
        with open(path, "wb") as f:
            for _ in range(0, size, 8 << 20):
                f.write(os.urandom(min(8 << 20, size - f.tell())))
        target = {
            "host": server.host,
            "port": server.port,
            "user": server.username,
            "key": str(server.private_key_path),
            "known_hosts": str(server.known_hosts_path),
            "path": str(path),
            "size": size,
        }
        skipped: dict[str, str] = {}
        if importlib.util.find_spec("asyncssh") is None:
            skipped = {
                t.label: "not installed (see --extra)" for t in TOOLS if t.client == "asyncssh"
            }
        tools = [tool for tool in TOOLS if tool.label not in skipped]
        runs: dict[str, list[Run]] = {tool.label: [] for tool in tools}
        for round_ in range(args.rounds):
            for tool in tools:
                run = measure(tool, meter, target, args.extra)
                runs[tool.label].append(run)
                print(
                    f"round {round_ + 1} {tool.label}: {run[0]:.2f} s, client CPU {run[1]:.2f} s,"
                    f" sshd CPU {run[2]:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"{args.size_mib} MiB of random bytes read to nothing over loopback, medians of "
        f"{args.rounds} alternating rounds; {os.cpu_count()} CPUs; "
        f"{subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}; "
        f"took {time.monotonic() - started:.0f} s"
    )
    print(table(runs, skipped, size))


if __name__ == "__main__":
    main()
