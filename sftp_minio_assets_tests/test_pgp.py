"""PGP-encrypted files decrypted in flight (issue 14, part 2): real key pairs made by GnuPG for
each test module, files encrypted (and signed) with them, copied through the real servers.
The settings' checks at load need no server."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import uuid

import pytest

from sftp_minio_assets.core.keys import encode_key
from sftp_minio_assets.defs.resources import source_from_env
from sftp_minio_assets.defs.sources import SourcesError, load_sources
from sftp_minio_assets.transfer.pgp import PgpSettings, decrypt
from sftp_minio_assets.worker.errors import SettingsError
from sftp_minio_assets.worker.worker import SourcePolicy

from .support import (
    PASSPHRASE,
    PROJECT,
    Process,
    agents_of,
    decrypting,
    offline_shared,
    running,
    wait_for,
)

MIB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def peak_memory(transfer, *args):
    """What transfer(*args) returns, and the peak of the Python memory it allocated (all
    threads: the reading one and the parts' uploads)."""
    tracemalloc.start()
    try:
        result = transfer(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.integration
def test_an_encrypted_file_is_stored_decrypted_without_its_suffix_in_bounded_memory(env, keys):
    plaintext = os.urandom(40 * MIB)
    encrypted = keys.encrypt(plaintext)
    env.write("in/data.csv.pgp", encrypted)
    env.write("in/smaller.csv.pgp", keys.encrypt(os.urandom(16 * MIB)))
    env.write("in/first.csv.pgp", keys.encrypt(os.urandom(8 * MIB)))
    env.write("in/notes.txt", b"copied as it is")
    # One 5 MiB part at a time; resume_min_mb=1 would make the files resumable, which cannot
    # decrypt: they must be streamed through gpg all the same.
    shared = env.shared(part_size_mb=5, parts_in_flight=1, resume_min_mb=1)
    worker = env.source(shared, **decrypting(keys)).worker()

    # The first copy loads what stays loaded (the S3 client's models, the keyring): not measured.
    assert worker.transfer(encode_key("in/first.csv.pgp")).status == "transferred"
    smaller, smaller_peak = peak_memory(worker.transfer, encode_key("in/smaller.csv.pgp"))
    outcome, peak = peak_memory(worker.transfer, encode_key("in/data.csv.pgp"))
    assert smaller.status == outcome.status == "transferred", outcome.message
    assert worker.transfer(encode_key("in/notes.txt")).status == "transferred"

    assert sorted(env.store.list_keys()) == [
        "default/in/data.csv",
        "default/in/first.csv",
        "default/in/notes.txt",
        "default/in/smaller.csv",
    ]
    assert env.object_sha256("default/in/data.csv") == sha256(plaintext)
    assert env.object_sha256("default/in/notes.txt") == sha256(b"copied as it is")
    # The log keeps what the partner sent; the object's own size and hash are recorded too.
    row = env.rows()[encode_key("in/data.csv.pgp")]
    assert (row["status"], row["sha256"].strip()) == ("COMPLETED", sha256(encrypted))
    assert (row["size_bytes"], row["stored_bytes"]) == (len(encrypted), len(plaintext))
    assert outcome.metadata["stored_sha256"] == sha256(plaintext)
    # Memory holds parts of 5 MiB (and the S3 client), not the file: 24 MiB more of file adds
    # less than half of that to the peak (a copy that buffered the plaintext would add all).
    assert peak < smaller_peak + 12 * MIB, f"{peak / MIB:.1f} MiB, {smaller_peak / MIB:.1f} MiB"


@pytest.mark.integration
def test_encrypted_files_copied_at_once_share_the_key_unlocked_once(env, keys):
    """gpg-agent refuses some of several unlocks asked at once: the key is unlocked once."""
    plaintexts = {f"batch/{n}.csv.pgp": os.urandom(256 * 1024 + n) for n in range(6)}
    for path, plaintext in plaintexts.items():
        env.write(path, keys.encrypt(plaintext))
    worker = env.source(**decrypting(keys)).worker()

    outcomes = list(worker.transfer_many([encode_key(path) for path in plaintexts], 6))

    assert [o.status for o in outcomes] == ["transferred"] * 6, [o.message for o in outcomes]
    for path, plaintext in plaintexts.items():
        assert env.object_sha256("default/" + path.removesuffix(".pgp")) == sha256(plaintext)


def corrupt(data: bytes) -> bytes:
    """Bytes flipped in the middle, as a broken transfer on the partner's side leaves them."""
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 16]) + data[middle + 16 :]


FAILURES = {
    # case: (how the file is made, settings changed, what the message says)
    "wrong key": (lambda k, d: k.encrypt(d, to="stranger"), {}, "SFTP_PGP_PRIVATE_KEY"),
    "corrupt": (lambda k, d: corrupt(k.encrypt(d)), {}, "send the file again"),
    "bad signature": (lambda k, d: k.encrypt(d, signer="stranger"), {}, "SFTP_PGP_VERIFY_KEY"),
    "unsigned": (lambda k, d: k.encrypt(d, signer=None), {}, "not signed"),
    "wrong passphrase": (
        lambda k, d: k.encrypt(d),
        {"pgp_passphrase": "not the passphrase"},
        "SFTP_PGP_PASSPHRASE",
    ),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", FAILURES)
def test_a_file_that_does_not_decrypt_or_verify_fails_for_good_leaving_nothing(env, keys, case):
    make, settings, says = FAILURES[case]
    # Three parts: the signature, known at the stream's end, comes after parts were uploaded.
    env.write("report.csv.gpg", make(keys, os.urandom(12 * MIB)))
    shared = env.shared(part_size_mb=5, parts_in_flight=1)
    source = env.source(shared, **decrypting(keys, **settings))

    outcome = source.worker().transfer("report.csv.gpg")

    assert (outcome.status, outcome.permanent) == ("failed", True), outcome.message
    assert says in outcome.message and "nothing was stored" in outcome.message
    assert PASSPHRASE not in outcome.message and "PRIVATE KEY BLOCK" not in outcome.message
    row = env.rows()["report.csv.gpg"]
    assert (row["status"], row["permanent"]) == ("FAILED", True)
    assert env.store.list_keys() == []
    assert env.store.list_multipart_uploads() == []
    assert (env.root / "report.csv.gpg").exists()


def test_without_a_verify_key_a_signature_by_an_unknown_key_does_not_matter(keys):
    settings = PgpSettings(keys.secret("us"), PASSPHRASE)
    encrypted = keys.encrypt(b"id,amount\n1,2\n", signer="stranger")
    chunks = (encrypted[i : i + 100] for i in range(0, len(encrypted), 100))
    assert b"".join(decrypt(settings, chunks)) == b"id,amount\n1,2\n"


# --- what gpg runs with, and what a killed run leaves ----------------------------------------


@pytest.mark.integration
def test_gpg_and_its_agent_run_without_the_workers_secrets(env, keys, monkeypatch):
    secrets = {
        "SFTP_PGP_PASSPHRASE": PASSPHRASE,
        "SFTP_PGP_PRIVATE_KEY": keys.secret("us"),
        "SFTP_PASSWORD": f"sftp-password-{uuid.uuid4().hex}",
        "MINIO_SECRET_KEY": env.stack.s3.secret_key,
        "TRANSFER_DB_URL": env.db_url,
        "DAGSTER_PG_PASSWORD": env.stack.postgres.password,
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    env.write("in/big.csv.pgp", keys.encrypt(os.urandom(24 * MIB)))
    # Settings no other test uses: their keyring, and its agent, start here, the secrets set.
    settings = decrypting(keys, pgp_suffixes=[".pgp", ".environ"])
    worker = env.source(env.shared(part_size_mb=5, parts_in_flight=1), **settings).worker()
    decrypting_now: list[Process] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            gpgs = running("gpg")
            mine = [p for p in gpgs if p.ppid == os.getpid() and "--decrypt" in p.command]
            decrypting_now.extend(mine)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outcome = worker.transfer(encode_key("in/big.csv.pgp"))
    finally:
        done.set()
        watcher.join()

    assert outcome.status == "transferred", outcome.message
    assert decrypting_now, "no gpg --decrypt was seen while the file was copied"
    agents = [agent for p in decrypting_now for agent in agents_of(p.homedir())]
    assert agents, "the keyring's gpg-agent is not running"
    for process in decrypting_now + agents:
        leaked = sorted(
            name for name, value in secrets.items() if value.encode() in process.environment
        )
        assert leaked == [], f"{process.command[0]} (pid {process.pid}) runs with {leaked}"


# A run's decryption: the keyring made, and gpg fed the first half of the message; then it waits
# for the rest on stdin, which never comes (the test kills it, or closes stdin to end it).
RUN = """
import os, sys
from sftp_minio_assets.transfer.pgp import PgpSettings, _keyring, decrypt

settings = PgpSettings(sys.argv[1], os.environ["PASSPHRASE"])
message = open(sys.argv[2], "rb").read()

def chunks():
    yield message[: len(message) // 2]
    print(_keyring(settings).home, flush=True)
    sys.stdin.read()

for _ in decrypt(settings, chunks()):
    pass
"""


def test_a_killed_runs_keyring_and_agent_are_gone_by_the_next_start(keys, tmp_path):
    key = tmp_path / "us.asc"
    key.write_text(keys.secret("us"))
    message = tmp_path / "message.pgp"
    message.write_bytes(keys.encrypt(os.urandom(MIB)))

    def start() -> tuple[subprocess.Popen, str]:
        run = subprocess.Popen(
            [sys.executable, "-c", RUN, str(key), str(message)],
            cwd=PROJECT,
            env={**os.environ, "PASSPHRASE": PASSPHRASE},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        return run, run.stdout.readline().decode().strip()

    killed, killed_home = start()
    alive, alive_home = start()
    try:
        assert killed_home and agents_of(killed_home), "the run's keyring has no agent"
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        # The agent, with the key it unlocked, ends with the run, before any other start.
        wait_for(lambda: not agents_of(killed_home), 15, "the killed run's gpg-agent to exit")

        following = subprocess.run(
            [sys.executable, "-c", RUN, str(key), str(message)],
            cwd=PROJECT,
            env={**os.environ, "PASSPHRASE": PASSPHRASE},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
        assert following.stdout.strip(), following.stderr.decode()[-2000:]

        assert not os.path.exists(killed_home), "the killed run's keyring is still there"
        assert os.path.exists(os.path.join(alive_home, "private-keys-v1.d"))
        assert agents_of(alive_home), "the next start stopped a live run's agent"
    finally:
        alive.stdin.close()  # the message ends short: the run fails and cleans up after itself
        alive.wait(timeout=30)
        alive_left = os.path.exists(alive_home)
        for home in (killed_home, alive_home):
            if home:  # what the code before the fix left behind
                subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], check=False)
                shutil.rmtree(home, ignore_errors=True)
    assert not alive_left, "a run that ends removes its keyring"


# --- settings, checked at load ---------------------------------------------------------------


def test_object_names_lose_the_encryption_suffix_and_may_gain_the_compressions():
    pgp = PgpSettings("unused")
    plain, packed = SourcePolicy("p", pgp=pgp), SourcePolicy("p", pgp=pgp, compression="gzip")
    assert plain.object_name("", "in/a.csv.pgp") == "p/in/a.csv"
    assert plain.object_name("", "B.TXT.GPG") == "p/B.TXT"
    assert plain.object_name("", "c.csv") == "p/c.csv"  # not encrypted: copied as it is
    assert packed.object_name("", "d.json.asc") == "p/d.json.gz"
    assert SourcePolicy("p").object_name("", "a.csv.pgp") == "p/a.csv.pgp"  # PGP off


def single_source(monkeypatch, **variables: str):
    """The default source from SFTP_* variables, as definitions.py loads it."""
    for name in [name for name in os.environ if name.startswith("SFTP_")]:
        monkeypatch.delenv(name)
    for name, value in {"SFTP_HOST": "sftp.example", "SFTP_USERNAME": "u", **variables}.items():
        monkeypatch.setenv(name, value)
    return source_from_env(offline_shared())


def test_the_single_source_decrypts_with_its_variables_kept_as_references(monkeypatch, keys):
    source = single_source(
        monkeypatch,
        SFTP_PGP_PRIVATE_KEY=keys.secret("us"),
        SFTP_PGP_PASSPHRASE=PASSPHRASE,
        SFTP_PGP_SUFFIXES=".enc",
    )
    # The secrets stay references to their variables, resolved by Dagster in the run.
    assert source.policy.pgp_passphrase == "SFTP_PGP_PASSPHRASE"
    assert source.policy.pgp_private_key == "SFTP_PGP_PRIVATE_KEY"
    policy = source.policy.for_worker("default")
    assert policy.decrypts("a.csv.enc") and not policy.decrypts("a.csv.pgp")
    assert PASSPHRASE not in repr(SourcePolicy("p", pgp=PgpSettings("key", PASSPHRASE)))


@pytest.mark.parametrize(
    "variables, says",
    [
        ({"SFTP_PGP_PRIVATE_KEY": "partner"}, "SFTP_PGP_PRIVATE_KEY: must hold a PGP private key"),
        ({"SFTP_PGP_PRIVATE_KEY": "/no/such/key.asc"}, "SFTP_PGP_PRIVATE_KEY: must be an armored"),
        ({"SFTP_PGP_PASSPHRASE": PASSPHRASE}, "need pgp_private_key (SFTP_PGP_PRIVATE_KEY)"),
        ({"SFTP_PGP_SUFFIXES": "pgp"}, "e.g. .pgp"),
    ],
)
def test_pgp_settings_that_cannot_work_are_refused_at_load(monkeypatch, keys, variables, says):
    if variables.get("SFTP_PGP_PRIVATE_KEY") == "partner":
        variables = {"SFTP_PGP_PRIVATE_KEY": keys.public("partner")}
    with pytest.raises(SettingsError) as error:
        single_source(monkeypatch, **variables)
    assert says in str(error.value)
    assert PASSPHRASE not in str(error.value) and "KEY BLOCK" not in str(error.value)


def test_a_verify_key_that_is_not_a_public_key_is_refused(monkeypatch, keys, tmp_path):
    not_a_key = tmp_path / "partner.asc"
    not_a_key.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot base64\n")
    with pytest.raises(SettingsError, match="SFTP_PGP_VERIFY_KEY: must hold the partner's"):
        single_source(
            monkeypatch, SFTP_PGP_PRIVATE_KEY=keys.secret("us"), SFTP_PGP_VERIFY_KEY=str(not_a_key)
        )


def test_pgp_secrets_in_a_sources_file_must_be_references(tmp_path, monkeypatch, keys):
    monkeypatch.setenv("PARTNER_PGP_KEY", keys.secret("us"))
    path = tmp_path / "sources.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            sources:
              partner:
                host: sftp.partner.example
                username: ingest
                pgp_private_key: {{env: PARTNER_PGP_KEY}}
                pgp_passphrase: "{PASSPHRASE}"
            """
        )
    )
    with pytest.raises(SourcesError) as error:
        load_sources(path, offline_shared())
    assert "`pgp_passphrase` must be a reference to an environment variable" in str(error.value)
    assert PASSPHRASE not in str(error.value)

    monkeypatch.setenv("PARTNER_PGP_PASSPHRASE", PASSPHRASE)
    path.write_text(path.read_text().replace(f'"{PASSPHRASE}"', "{env: PARTNER_PGP_PASSPHRASE}"))
    partner = load_sources(path, offline_shared())["partner"]
    assert partner.policy.for_worker("partner").object_name("", "x.pgp") == "partner/x"
    assert PASSPHRASE not in repr(partner.model_dump())
