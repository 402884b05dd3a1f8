"""The SFTP side: connect with a verified host key, list a tree, read a file fast.

Plain paramiko, no Dagster: the resources and the benchmark both build on it. The few
exchanges that need paramiko's private request layer live in sftp_wire.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import io
import logging
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from .wire import finish_answers

if TYPE_CHECKING:
    from .sessions import SessionBudget

log = logging.getLogger(__name__)

# AES-GCM first: measured here ~15% faster than paramiko's default (aes128-ctr + HMAC).
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
# paramiko's SFTPFile.read(n) rebuilds its buffer per chunk: reads above ~1 MiB turn quadratic.
READ_CHUNK = 1024 * 1024
# The SSH channel's receive window: room for the largest read window (reads.MAX_READ_WINDOW).
CHANNEL_WINDOW = 16 * 1024 * 1024
# How long closing a session of a budget waits for its connection to end.
CLOSE_TIMEOUT_SECONDS = 10.0
# The most a session about to close waits for the answers still due (a broken one gives none).
ANSWERS_TIMEOUT_SECONDS = 2.0
# SSH handshakes at once to one server, per process: OpenSSH's default MaxStartups (10:30:100)
# drops new connections at random beyond 10 not yet logged in, and a run opens MAX_WORKERS.
HANDSHAKES_AT_ONCE = 4


class HostKeyError(paramiko.SSHException):
    """The server's host key is unknown or does not match the pinned one: refuse to connect."""


class CredentialsError(paramiko.AuthenticationException):
    """No login is possible with the settings: no credentials, an unreadable key file, a wrong
    passphrase, or a login the server refused. The message names the server and the setting."""


class ServerUnreachable(ConnectionError):
    """No SSH session could be opened: the server is down, unreachable, or not an SSH server."""


class RootUnavailable(OSError):
    """The source's root cannot be listed: missing, not a directory, or not readable."""


# The variables that set the single source (`default`): environment.source_from_env reads them,
# and messages name its settings by them.
VARIABLES = {
    "host": "SFTP_HOST",
    "port": "SFTP_PORT",
    "username": "SFTP_USERNAME",
    "password": "SFTP_PASSWORD",
    "private_key": "SFTP_PRIVATE_KEY_PATH",
    "known_hosts_path": "SFTP_KNOWN_HOSTS_PATH",
    "host_key_sha256": "SFTP_HOST_KEY_SHA256",
    "allow_unknown_host": "SFTP_ALLOW_UNKNOWN_HOST",
    "max_sessions": "SFTP_MAX_SESSIONS",
    "transport": "SFTP_TRANSPORT",
    "root": "SFTP_ROOT",
    "follow_symlinks": "SFTP_FOLLOW_SYMLINKS",
    "listing": "SFTP_LISTING",
    "full_listing_every_hours": "SFTP_FULL_LISTING_EVERY_HOURS",
    "listing_seconds_per_tick": "SFTP_LISTING_SECONDS_PER_TICK",
    "min_file_age_seconds": "MIN_FILE_AGE_SECONDS",
    "transfer_window": "SFTP_TRANSFER_WINDOW",
    "compression": "COMPRESSION",
    "after_copy": "AFTER_COPY",
    "archive_dir": "ARCHIVE_DIR",
    "max_bytes_per_second": "SFTP_MAX_BYTES_PER_SECOND",
    "ready_marker": "SFTP_READY_MARKER",
    "require_stable_listing": "SFTP_REQUIRE_STABLE_LISTING",
    "server_checksums": "SERVER_CHECKSUMS",
    "destination_template": "SFTP_DESTINATION_TEMPLATE",
    "pgp_private_key": "SFTP_PGP_PRIVATE_KEY",
    "pgp_passphrase": "SFTP_PGP_PASSPHRASE",
    "pgp_verify_key": "SFTP_PGP_VERIFY_KEY",
}
# A source of a sources file is set by keys named as the settings, but for the key file's path.
FILE_KEYS = {"private_key": "private_key_path"}


@dataclass(frozen=True)
class SettingNames:
    """How messages name the settings to fix: as the source's user set them. The single source
    is set by environment variables (SFTP_PASSWORD), a source of a sources file by keys under
    its name (`password` of source partner_a in /etc/sources.yaml)."""

    where: str = ""  # "source partner_a in /etc/sources.yaml"; empty: the variables
    keys: Mapping[str, str] = field(default_factory=dict)  # setting -> the key its user wrote

    def __call__(self, *settings: str, joined: str = " / ") -> str:
        if not self.where:
            return joined.join(VARIABLES[setting] for setting in settings)
        keys = (self.keys.get(setting) or FILE_KEYS.get(setting, setting) for setting in settings)
        return joined.join(f"`{key}`" for key in keys) + f" of {self.where}"


ENVIRONMENT = SettingNames()  # the single source's: its environment variables


def credentials(names: SettingNames) -> str:
    """The settings a refused login points at."""
    return names("username", "private_key", "password", joined=", ")


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the source root, POSIX separators
    size: int
    mtime: int  # seconds since the epoch, as the server reports it

    @property
    def signature(self) -> str:
        """What changes when the file's content is replaced."""
        return f"{self.size}:{self.mtime}"


@dataclass(frozen=True)
class SFTPSettings:
    host: str
    port: int = 22
    username: str = ""
    password: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)  # a path, or the PEM text itself
    known_hosts_path: str | None = None
    host_key_sha256: str | None = None  # "SHA256:..." as `ssh-keygen -lf` prints it
    allow_unknown_host: bool = False
    # "auto": OpenSSH's ssh client for a near server where installed, else paramiko (openssh.py)
    transport: str = "auto"
    timeout: float = 30.0
    names: SettingNames = ENVIRONMENT  # how messages name these settings and the source's

    @property
    def server(self) -> str:
        """How errors and logs name the server (never with a secret)."""
        return f"sftp://{self.username}@{self.host}:{self.port}"


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


KEY_CLASSES = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


def _load_private_key(settings: SFTPSettings) -> paramiko.PKey:
    """The key, from a file or PEM text; CredentialsError says why it cannot be used."""
    value, password = settings.private_key or "", settings.password
    server, names = settings.server, settings.names
    pem = "PRIVATE KEY-----" in value
    key = "the private key (PEM text)" if pem else f"the private key {value}"
    try:
        text = value if pem else Path(value).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(
            f"{server}: cannot read {key}: {getattr(exc, 'strerror', None) or exc}. Set "
            f"{names('private_key')} to a readable key file."
        ) from None
    for key_class in KEY_CLASSES:
        try:
            return key_class.from_private_key(io.StringIO(text), password=password)
        except paramiko.SSHException:
            continue
    if not _is_encrypted(text):
        raise CredentialsError(f"{server}: {key} is not an ed25519, ECDSA or RSA private key.")
    if password is None:
        raise CredentialsError(
            f"{server}: {key} is encrypted and no passphrase is set: set {names('password')} "
            "to its passphrase."
        )
    raise CredentialsError(
        f"{server}: {key} cannot be decrypted with the passphrase in {names('password')}: "
        "the passphrase is wrong."
    )


def _is_encrypted(text: str) -> bool:
    for key_class in KEY_CLASSES:
        try:
            key_class.from_private_key(io.StringIO(text))
        except paramiko.PasswordRequiredException:
            return True
        except paramiko.SSHException:
            continue
    return False


class SFTPConnector:
    """Opens authenticated SFTP sessions to one server, host key verified."""

    def __init__(self, settings: SFTPSettings):
        self.settings = settings
        self._known_keys: dict[str, paramiko.PKey] = {}
        if settings.known_hosts_path:
            host_keys = paramiko.HostKeys(str(Path(settings.known_hosts_path).expanduser()))
            name = settings.host if settings.port == 22 else f"[{settings.host}]:{settings.port}"
            self._known_keys = dict(host_keys.lookup(name) or {})
        if not (self._known_keys or settings.host_key_sha256 or settings.allow_unknown_host):
            raise HostKeyError(
                f"{settings.server}: no known host key. Set "
                f"{settings.names('known_hosts_path', 'host_key_sha256', joined=' or ')}: a "
                "known_hosts file that lists this server, or its fingerprint "
                "(ssh-keyscan HOST | ssh-keygen -lf -)."
            )

    def connect(self) -> paramiko.SFTPClient:
        s = self.settings
        try:
            sock = socket.create_connection((s.host, s.port), timeout=s.timeout)
        except OSError as exc:
            raise self._unreachable(exc) from exc
        # paramiko never sets TCP_NODELAY; without it small files wait on Nagle (84 → 238 files/s).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock)
        try:
            options = transport.get_security_options()
            options.ciphers = PREFERRED_CIPHERS + tuple(
                c for c in options.ciphers if c not in PREFERRED_CIPHERS
            )
            if self._known_keys:
                # Ask only for the key types we can check, or the server may pick another one.
                options.key_types = (
                    tuple(t for t in options.key_types if t in self._known_keys)
                    or options.key_types
                )
            try:
                transport.start_client(timeout=s.timeout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise self._unreachable(exc) from exc
            self._verify_host_key(transport.get_remote_server_key())
            self._authenticate(transport)
            sftp = paramiko.SFTPClient.from_transport(transport, window_size=CHANNEL_WINDOW)
            assert sftp is not None
            sftp.get_channel().settimeout(s.timeout)
            return sftp
        except BaseException:
            transport.close()
            raise

    def _unreachable(self, exc: BaseException) -> ServerUnreachable:
        reason = str(exc) or type(exc).__name__
        return ServerUnreachable(
            f"{self.settings.server}: cannot open an SSH session: {reason}. "
            "Check that the server is up and reachable from here, and "
            f"{self.settings.names('host', 'port')}."
        )

    def _verify_host_key(self, key: paramiko.PKey) -> None:
        s = self.settings
        seen = fingerprint(key)
        if self._known_keys:
            expected = self._known_keys.get(key.get_name())
            if expected is None or expected.asbytes() != key.asbytes():
                raise HostKeyError(
                    f"{s.server}: host key {seen} does not match {s.known_hosts_path}. "
                    "If the server's key was changed on purpose, update the known_hosts file; "
                    "otherwise someone may be intercepting the connection."
                )
        elif s.host_key_sha256:
            if seen != s.host_key_sha256.strip():
                raise HostKeyError(
                    f"{s.server}: host key {seen} does not match "
                    f"{s.names('host_key_sha256')} {s.host_key_sha256}. Update the pinned "
                    "fingerprint only if the server's key was changed on purpose."
                )
        else:
            log.warning("%s: accepting unverified host key %s (allow_unknown_host)", s.server, seen)

    def _authenticate(self, transport: paramiko.Transport) -> None:
        s = self.settings
        try:
            if s.private_key:
                key = _load_private_key(s)
                method = "key"
                transport.auth_publickey(s.username, key)
            elif s.password is not None:
                method = "password"
                transport.auth_password(s.username, s.password)
            else:
                raise CredentialsError(
                    f"{s.server}: no credentials; set "
                    f"{s.names('private_key', 'password', joined=' or ')}."
                )
        except paramiko.BadAuthenticationType as exc:
            raise CredentialsError(
                f"{s.server}: the server does not accept {method} logins (it accepts: "
                f"{', '.join(exc.allowed_types)}). Check {credentials(s.names)}."
            ) from None
        except CredentialsError:
            raise
        except paramiko.AuthenticationException:
            raise CredentialsError(
                f"{s.server}: the server refused the {method} login of {s.username!r}. "
                f"Check {credentials(s.names)}."
            ) from None


class SFTPPool:
    """One SFTP session per thread, opened on first use and kept until the thread lets it go
    (discard) or the pool closes.

    A handshake costs ~100 ms: reusing sessions is what makes thousands of small files fast.
    With a budget (sessions.SessionBudget: the source's max_sessions), each session holds a
    lease of the server's budget from before it connects until it is closed.
    """

    def __init__(self, connector: SFTPConnector, budget: SessionBudget | None = None):
        self.connector = connector
        self.budget = budget
        self._local = threading.local()
        self._open: dict[paramiko.SFTPClient, int | None] = {}  # session -> its lease
        self._lock = threading.Lock()

    def get(self, purpose: str = "transfer", patience: float | None = None) -> paramiko.SFTPClient:
        """This thread's session. A new one waits for a slot of the budget first: as long as
        it takes, or `patience` seconds before sessions.SessionsBusy; purpose names it there
        ("transfer", "listing")."""
        sftp = getattr(self._local, "sftp", None)
        if sftp is None or not sftp.get_channel().get_transport().is_active():
            if sftp is not None:
                self._close(sftp)  # dropped by the server: its slot is free
            sftp = self._connect(purpose, patience)
            self._local.sftp = sftp
        return sftp

    def _connect(self, purpose: str, patience: float | None) -> paramiko.SFTPClient:
        lease = self.budget.acquire(purpose, patience) if self.budget else None
        try:
            with _handshakes(self.connector.settings):
                sftp = self.connector.connect()
        except BaseException:
            if lease is not None and self.budget is not None:  # a lease is the budget's
                self.budget.release(lease)
            raise
        with self._lock:
            self._open[sftp] = lease
        return sftp

    def lost(self) -> bool:
        """Whether this thread's session is one whose connection ended (cut, reset, closed by
        the server): the next get() opens another."""
        sftp = getattr(self._local, "sftp", None)
        return sftp is not None and not sftp.get_channel().get_transport().is_active()

    def discard(self) -> None:
        """Close this thread's session: after an error, so that the next use reconnects; or
        when the thread has nothing more to do for a while, so that its slot of the server's
        budget goes to whoever waits."""
        sftp = getattr(self._local, "sftp", None)
        self._local.sftp = None
        if sftp is not None:
            self._close(sftp)

    def close(self) -> None:
        with self._lock:
            sessions = list(self._open)
        for sftp in sessions:
            self._close(sftp)
        if self.budget is not None:
            self.budget.close()

    def _close(self, sftp: paramiko.SFTPClient) -> None:
        """Close the session, then give its lease back (never the other way round: the server
        would see one session more than the budget for a moment)."""
        with self._lock:
            if sftp not in self._open:
                return  # closed already
            lease = self._open.pop(sftp)
        finish_answers(sftp, timeout=ANSWERS_TIMEOUT_SECONDS)
        transport = sftp.get_channel().get_transport()
        transport.close()
        if lease is not None and self.budget is not None:  # a lease is the budget's
            # The connection ends only once paramiko's reader thread leaves its recv(), which
            # holds the socket open for up to its 0.1 s poll (longer on a loaded machine):
            # released before that, the slot could let another process connect while the
            # server still counts this session.
            transport.join(CLOSE_TIMEOUT_SECONDS)
            self.budget.release(lease)


_HANDSHAKES: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_HANDSHAKES_LOCK = threading.Lock()


def _handshakes(settings: SFTPSettings) -> threading.BoundedSemaphore:
    """The slots for handshakes with this server in this process (HANDSHAKES_AT_ONCE)."""
    with _HANDSHAKES_LOCK:
        return _HANDSHAKES.setdefault(
            (settings.host, settings.port), threading.BoundedSemaphore(HANDSHAKES_AT_ONCE)
        )


@dataclass(frozen=True)
class FileFilter:
    include: tuple[str, ...] = ()  # globs on the relative path; empty means everything
    exclude: tuple[str, ...] = ()

    def accepts(self, path: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(path, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(path, p) for p in self.exclude)


def display(path: str) -> str:
    """A path for messages: undecodable bytes shown as \\xNN."""
    return remote_bytes(path).decode("utf-8", "backslashreplace")


def remote_bytes(path: str) -> bytes:
    """Paths are str with undecodable bytes kept as surrogates (like os.fsdecode); paramiko
    takes bytes paths as they are."""
    return path.encode("utf-8", "surrogateescape")
