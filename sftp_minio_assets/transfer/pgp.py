"""PGP-encrypted files decrypted in flight, by GnuPG itself, and their signature checked.

Why GnuPG, run as a subprocess: it is the reference OpenPGP implementation, maintained for 25
years and packaged everywhere (Debian's `gnupg`), and it decrypts a stream with bounded memory,
writing the plaintext as it reads the message. The Python libraries are not there: PGPy parses
whole messages in memory (a 10 GiB file needs 10 GiB), and python-gnupg drives the same gpg
binary but through its own threads and buffers that hold the whole output unless given a file.

One private keyring per process and set of settings, in a temporary GNUPGHOME, holds the key
(and the partner's public key, when signatures are checked); gpg reads the message on stdin and
writes the plaintext on stdout, both pumped by one selector loop in the transfer's own thread
(no pipe deadlock, no thread: the SFTP reads, the heartbeat and the bandwidth cap stay where
they are), and reports on stderr with `--status-fd`. Whether the file decrypted whole, and
whether its signature was good, is only known at the end of the stream (a one-pass signed
message carries its signature last): the failure is raised then, before the object's commit
(transfer/copy.py completes the upload only after the last chunk was read), so nothing appears.
"""

from __future__ import annotations

import atexit
import fcntl
import glob
import os
import selectors
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

GPG = "gpg"
GPG_AGENT = "gpg-agent"
HOME_PREFIX = "sftp-pgp-"
OWNER = "owner.lock"
# Never cached: every gpg brings the passphrase (--passphrase-fd), so the key is unlocked only
# while a gpg uses it, and an agent left behind holds nothing. Tried: 8 rounds of 12 files at
# once all decrypted, with no refusal.
CACHE_TTL_SECONDS = 0
DEFAULT_SUFFIXES = (".pgp", ".gpg", ".asc")
ARMOR = "-----BEGIN PGP "
STATUS = "[GNUPG:] "
READ_SIZE = 1024 * 1024  # a pipe holds 64 KiB: reads are that size at most in practice


class DecryptionFailed(Exception):
    """The file could not be decrypted, or its signature does not hold: permanent, as retrying
    the same bytes with the same key gives the same answer. `settings` are the fields to fix
    (policy field names), `fix` what to do, for errors.advice."""

    def __init__(self, message: str, settings: tuple[str, ...], fix: str):
        super().__init__(message)
        self.settings = settings
        self.fix = fix


@dataclass(frozen=True)
class PgpSettings:
    """A source's decryption: its private key and passphrase (secrets, never repeated), the
    partner's public key when signatures are required, and which files are encrypted."""

    private_key: str = field(repr=False)  # armored text, or the path of a file holding it
    passphrase: str | None = field(default=None, repr=False)
    verify_key: str | None = None  # armored text or a path; set: files must be signed by it
    suffixes: tuple[str, ...] = DEFAULT_SUFFIXES

    def encrypted(self, path: str) -> bool:
        return path.lower().endswith(tuple(s.lower() for s in self.suffixes))

    def plain_name(self, path: str) -> str:
        """The path without its encryption suffix (a.csv.pgp -> a.csv)."""
        for suffix in self.suffixes:
            if path.lower().endswith(suffix.lower()) and len(path) > len(suffix):
                return path[: -len(suffix)]
        return path


def _environment(home: str) -> dict[str, str]:
    """What gpg and gpg-agent run with: not the worker's environment, which holds the passphrase,
    the private key and the servers' passwords, all readable in /proc/<pid>/environ for as long
    as the process lives (the agent outlives a file). The C locale keeps gpg's words English, as
    _judge reads them."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "GNUPGHOME": home,
        "HOME": home,
        "LC_ALL": "C",
    }


def key_text(value: str) -> str:
    """The armored key a setting gives: the text itself, or the file at that path."""
    if value.lstrip().startswith(ARMOR):
        return value
    with open(value, encoding="ascii") as f:
        return f.read()


def key_problem(value: str, secret: bool) -> str | None:
    """What is wrong with a key setting, if anything: checked when the settings load."""
    try:
        text = key_text(value)
    except (OSError, UnicodeDecodeError) as exc:
        kind = "an armored PGP key (-----BEGIN PGP ...)"
        # Never repeat the value: it may be the key itself, cut short.
        return f"must be {kind} or the path of a file holding one ({type(exc).__name__})"
    if shutil.which(GPG) is None:
        return "needs GnuPG (gpg), which is not installed: install the gnupg package"
    with tempfile.TemporaryDirectory(prefix="sftp-pgp-check-") as home:
        shown = subprocess.run(
            [GPG, "--homedir", home, "--batch", "--no-tty", "--with-colons", "--show-keys"],
            input=text.encode(),
            capture_output=True,
            check=False,
            env=_environment(home),
        )
    records = {line.split(":")[0] for line in shown.stdout.decode(errors="replace").splitlines()}
    if secret and "sec" not in records:
        return "must hold a PGP private key (gpg --armor --export-secret-keys), not a public one"
    if not secret and "pub" not in records:
        return "must hold the partner's PGP public key (gpg --armor --export)"
    return None


def decrypt(settings: PgpSettings, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The plaintext of the OpenPGP message that chunks carry, as gpg writes it; raises
    DecryptionFailed at the end (or as soon as gpg gives up) if the message did not decrypt
    whole or, with a verify_key, was not signed by that key."""
    yield from _keyring(settings).decrypt(chunks)


_keyrings: dict[PgpSettings, _Keyring] = {}
_keyrings_lock = threading.Lock()


def _keyring(settings: PgpSettings) -> _Keyring:
    """The process's keyring for these settings, made at first use."""
    with _keyrings_lock:
        if settings not in _keyrings:
            _keyrings[settings] = _Keyring(settings)
        return _keyrings[settings]


def _claim(home: str) -> int:
    """A lock on home held for the process's life, which the kernel releases however the process
    ends (SIGKILL too): sweep_stale_homes tells a live owner from a dead one by it, where a pid
    can be reused or, in another container sharing /tmp, be another process's. Locked before it
    has its name, so no sweep finds it unlocked."""
    staged = os.path.join(home, OWNER + ".new")
    owner = os.open(staged, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(owner, fcntl.LOCK_EX)
    os.rename(staged, os.path.join(home, OWNER))
    return owner


def sweep_stale_homes() -> None:
    """Removes the homes that killed or crashed processes left, with their private key files,
    and stops their agents. A home whose owner lives is locked, and left alone; one without an
    owner lock (another version's, or another user's) is not judged. Called by every keyring
    made, and by the sensor's clean-up at every tick: a run killed after the last encrypted
    file was opened leaves no home behind for long."""
    for home in glob.glob(os.path.join(tempfile.gettempdir(), HOME_PREFIX + "*")):
        try:
            owner = os.open(os.path.join(home, OWNER), os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _remove(home)
        except BlockingIOError:
            pass
        finally:
            os.close(owner)


def _remove(home: str) -> None:
    subprocess.run(
        ["gpgconf", "--homedir", home, "--kill", "gpg-agent"],
        capture_output=True,
        check=False,
        env=_environment(home),
    )
    shutil.rmtree(home, ignore_errors=True)


def _start_agent(home: str) -> tuple[subprocess.Popen, int]:
    """home's gpg-agent, which ends within seconds of this process, however it ends: given a
    command, `gpg-agent --daemon` runs it as the agent's parent and exits when it is gone
    ("parent process died"). The command is cat reading a pipe that only this process writes:
    it ends when the kernel closes this process's descriptors. Returns cat and the pipe.

    Started here rather than by gpg on demand, as gpg would start one that outlives the run."""
    reader, lifeline = os.pipe()
    agent = subprocess.Popen(
        [GPG_AGENT, "--homedir", home, "--daemon", "cat"],
        stdin=reader,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_environment(home),
    )
    os.close(reader)
    stdout, stderr = _pipe(agent.stdout), _pipe(agent.stderr)
    # The agent listens before it runs cat: a byte echoed by cat means gpg finds it ready.
    os.write(lifeline, b".")
    if stdout.read(1) != b".":
        said = stderr.read().decode(errors="replace").strip().splitlines()[-1:]
        os.close(lifeline)
        agent.wait()
        raise OSError(
            f"gpg-agent did not start for the PGP keyring {home} ({'; '.join(said)}): check "
            "that GnuPG's gpg-agent is installed (the gnupg package) and that "
            f"{tempfile.gettempdir()} is writable; the partition is retried."
        )
    stdout.close()
    stderr.close()
    return agent, lifeline


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    """A pipe of a process started with it as subprocess.PIPE, which Popen always opens."""
    if stream is None:
        raise RuntimeError("the gpg process was started without this pipe")
    return stream


class _Keyring:
    """A private GNUPGHOME with the source's keys imported, removed when the process ends."""

    def __init__(self, settings: PgpSettings):
        self.settings = settings
        sweep_stale_homes()
        # Short: gpg-agent's socket lives in it, and socket paths are limited to 108 bytes. The
        # pid tells a reader of /tmp whose it is; the owner lock tells sweep_stale_homes.
        self.home = tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{os.getpid()}-")
        self._owner = _claim(self.home)
        with open(os.path.join(self.home, "gpg-agent.conf"), "w") as conf:
            conf.write(f"allow-loopback-pinentry\ndefault-cache-ttl {CACHE_TTL_SECONDS}\n")
            conf.write(f"max-cache-ttl {CACHE_TTL_SECONDS}\n")
        self._agent, self._lifeline = _start_agent(self.home)
        atexit.register(self.close)
        self._import(key_text(settings.private_key), "pgp_private_key")
        self.partner: frozenset[str] = frozenset()
        if settings.verify_key:
            text = key_text(settings.verify_key)
            self._import(text, "pgp_verify_key")
            shown = self._gpg("--with-colons", "--show-keys", data=text.encode()).decode()
            self.partner = frozenset(_fingerprints(shown))
        self._unlock()

    def _gpg(self, *args: str, data: bytes) -> bytes:
        """gpg's output for args and data on its stdin; CalledProcessError if it fails."""
        command = [GPG, "--homedir", self.home, "--batch", "--no-tty", *args]
        done = subprocess.run(
            command, input=data, capture_output=True, check=True, env=_environment(self.home)
        )
        return done.stdout

    def _import(self, text: str, setting: str) -> None:
        try:
            self._gpg("--import", data=text.encode())
        except subprocess.CalledProcessError:
            raise DecryptionFailed(
                "GnuPG refused to import the key.",
                (setting,),
                "Set {settings} to an armored PGP key (gpg --armor --export...), then rerun.",
            ) from None

    def _unlock(self) -> None:
        """A message to the key itself, decrypted: the passphrase is checked at the start."""
        try:
            sealed = self._gpg(
                "--trust-model", "always", "--default-recipient-self", "--encrypt", data=b"."
            )
        except subprocess.CalledProcessError:
            raise DecryptionFailed(
                "the PGP private key cannot decrypt (it has no encryption subkey).",
                ("pgp_private_key",),
                "Set {settings} to the key the partner encrypts for, then rerun.",
            ) from None
        for _ in self.decrypt(iter([sealed]), verify=False):
            pass

    def close(self) -> None:
        _remove(self.home)
        os.close(self._lifeline)
        self._agent.wait()
        os.close(self._owner)

    def decrypt(self, chunks: Iterator[bytes], verify: bool = True) -> Iterator[bytes]:
        command = [
            *(GPG, "--homedir", self.home, "--batch", "--no-tty", "--status-fd", "2"),
            *("--trust-model", "always", "--pinentry-mode", "loopback"),
        ]
        passphrase_fd, writer = os.pipe()
        # A passphrase is far smaller than a pipe's buffer: written whole before gpg starts.
        os.write(writer, (self.settings.passphrase or "").encode() + b"\n")
        os.close(writer)
        command += ["--passphrase-fd", str(passphrase_fd), "--decrypt"]
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(passphrase_fd,),
            env=_environment(self.home),
        )
        os.close(passphrase_fd)
        report = _Report()
        try:
            yield from _pump(process, chunks, report)
            process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if hasattr(chunks, "close"):  # gpg gave up early: the reads in flight end now
                chunks.close()
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None and not pipe.closed:
                    pipe.close()
        self._judge(report, process.returncode, verify)

    def _judge(self, report: _Report, returncode: int, verify: bool) -> None:
        """Raises DecryptionFailed unless the message decrypted whole (and, with a verify_key,
        was signed by the partner's key)."""
        said = report.status
        detail = f" (gpg: {report.last_words()})" if report.last_words() else ""
        if "NO_SECKEY" in said and "DECRYPTION_OKAY" not in said:
            keys = ", ".join(sorted({args.split()[0] for args in said["NO_SECKEY"]}))
            raise DecryptionFailed(
                f"the file is encrypted for PGP key {keys}, not for this source's private key.",
                ("pgp_private_key",),
                "Set {settings} to the private key the partner encrypts for (or have the "
                "partner encrypt for your key), then rerun the partition.",
            )
        if "BAD_PASSPHRASE" in said or "bad passphrase" in report.last_words().lower():
            raise DecryptionFailed(
                "the passphrase does not unlock the PGP private key.",
                ("pgp_passphrase",),
                "Set {settings} to the private key's passphrase, then rerun the partition.",
            )
        # gpg exits non-zero for a signature it cannot check too: that is judged below.
        decrypted = "DECRYPTION_OKAY" in said and not {"DECRYPTION_FAILED", "BADMDC"} & set(said)
        if not decrypted or (returncode != 0 and "NEWSIG" not in said):
            what = "is not an encrypted OpenPGP message" if "ENC_TO" not in said else "is corrupt"
            raise DecryptionFailed(
                f"the file {what}{detail}.",
                (),
                "Ask the partner to send the file again, encrypted for your key; then rerun the "
                "partition.",
            )
        if not (verify and self.settings.verify_key):
            return
        signers = [args.split()[-1] for args in said.get("VALIDSIG", ())]
        if "GOODSIG" in said and signers and all(signer in self.partner for signer in signers):
            return
        if "BADSIG" in said:
            problem = "its signature does not match its content (a bad signature)"
        elif any(kind in said for kind in ("EXPSIG", "EXPKEYSIG", "REVKEYSIG")):
            problem = "it is signed with an expired or revoked key"
        elif signers or "ERRSIG" in said:
            problem = "it is signed by another key than the partner's"
        else:
            problem = "it is not signed, and signatures are required"
        raise DecryptionFailed(
            f"the file decrypted but {problem}.",
            ("pgp_verify_key",),
            "Check that {settings} is the partner's current public key, or ask the partner to "
            "sign the file with it and send it again; then rerun the partition.",
        )


class _Report:
    """gpg's stderr: its status lines (`[GNUPG:] KEYWORD args`), and the last human ones."""

    def __init__(self) -> None:
        self.status: dict[str, list[str]] = {}
        self.human: list[str] = []
        self._partial = b""

    def feed(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-4096:]  # a line's head; bounded whatever gpg writes
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            if line.startswith(STATUS):
                keyword, _, args = line[len(STATUS) :].partition(" ")
                self.status.setdefault(keyword, []).append(args)
                del self.status[keyword][:-20]  # bounded too
            elif line.startswith("gpg: ") and not line.startswith("gpg: encrypted with"):
                self.human = [*self.human[-4:], line[len("gpg: ") :]]

    def last_words(self) -> str:
        return "; ".join(self.human[-2:])


def _pump(process: subprocess.Popen, chunks: Iterator[bytes], report: _Report) -> Iterator[bytes]:
    """Feeds chunks to gpg's stdin and yields its stdout, reading its stderr into report, all
    from this thread: a selector waits for whichever pipe is ready, so none of them fills up
    while another is waited on. At most one chunk and the pipes' buffers are held."""
    stdin, stdout, stderr = _pipe(process.stdin), _pipe(process.stdout), _pipe(process.stderr)
    for pipe in (stdin, stdout, stderr):
        os.set_blocking(pipe.fileno(), False)
    selector = selectors.DefaultSelector()
    selector.register(stdin, selectors.EVENT_WRITE)
    selector.register(stdout, selectors.EVENT_READ)
    selector.register(stderr, selectors.EVENT_READ)
    pending = memoryview(b"")
    with selector:
        while selector.get_map():
            for key, _ in selector.select():
                if key.fileobj is stdin:
                    if not pending:
                        chunk = next(chunks, None)
                        if chunk is None:
                            selector.unregister(stdin)
                            stdin.close()  # the message's end: gpg finishes
                            continue
                        pending = memoryview(chunk)
                    try:
                        pending = pending[os.write(stdin.fileno(), pending) :]
                    except BrokenPipeError:  # gpg gave up (a wrong key): it says why
                        selector.unregister(stdin)
                        stdin.close()
                    continue
                data = os.read(key.fd, READ_SIZE)  # fileobj's descriptor
                if not data:
                    selector.unregister(key.fileobj)
                elif key.fileobj is stdout:
                    yield data
                else:
                    report.feed(data)


def _fingerprints(colons: str) -> list[str]:
    """The fingerprints in gpg --with-colons output (primary keys and subkeys)."""
    return [line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:")]
