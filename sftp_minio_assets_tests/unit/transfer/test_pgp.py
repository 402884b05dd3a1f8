"""PGP (issue 14, part 2) without a server: real key pairs made by GnuPG for each test module;
decryption and signatures, a killed run's keyring and agent cleaned up, object names, and the
settings' checks at load. (Files copied through the real servers: integration/test_pgp.py.)"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from sftp_minio_assets.defs.environment import source_from_env
from sftp_minio_assets.defs.sources import SourcesError, load_sources
from sftp_minio_assets.transfer.pgp import PgpSettings, decrypt
from sftp_minio_assets.worker.errors import SettingsError
from sftp_minio_assets.worker.source_policy import SourcePolicy
from sftp_minio_assets_tests.support import (
    PASSPHRASE,
    PROJECT,
    agents_of,
    offline_shared,
    wait_for,
)

MIB = 1024 * 1024


def test_without_a_verify_key_a_signature_by_an_unknown_key_does_not_matter(keys):
    settings = PgpSettings(keys.secret("us"), PASSPHRASE)
    encrypted = keys.encrypt(b"id,amount\n1,2\n", signer="stranger")
    chunks = (encrypted[i : i + 100] for i in range(0, len(encrypted), 100))
    assert b"".join(decrypt(settings, chunks)) == b"id,amount\n1,2\n"


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
