"""PGP-encrypted files decrypted in flight (issue 14, part 2): real key pairs made by GnuPG for
each test module, files encrypted (and signed) with them, copied through the real servers.
(The settings' checks at load, with no server: unit/transfer/test_pgp.py.)"""

import hashlib
import os
import threading
import time
import tracemalloc
import uuid

import pytest

from sftp_minio_assets.core.keys import encode_key
from sftp_minio_assets_tests.support import (
    PASSPHRASE,
    Process,
    agents_of,
    decrypting,
    running,
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
