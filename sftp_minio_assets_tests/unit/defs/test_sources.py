"""Several sources from a YAML file: each with its own asset, partitions, sensor and policy
(compression, what becomes of the source file), the file read without a server. (Its sources
run against the real servers: integration/test_sources.py.)"""

import re
import textwrap

import pytest

from sftp_minio_assets.defs import sources as sources_module
from sftp_minio_assets.defs.sources import SourcesError, load_sources, source_key
from sftp_minio_assets_tests.support import PROJECT, offline_shared, write_sources


def test_a_sources_file_names_each_source_and_keeps_secrets_in_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTNER_PASSWORD", "s3cr3t-from-env")
    path = write_sources(
        tmp_path,
        """
        sources:
          partner:
            host: sftp.partner.example
            username: ingest
            password: {env: PARTNER_PASSWORD}
            host_key_sha256: "SHA256:abc"
            root: /outgoing
            include: ["*.csv"]
            destination_prefix: partner-a
            max_workers: 2
            compression: zstd
            after_copy: move
            archive_dir: /archive
          legacy:
            host: legacy.example
            username: batch
            private_key_path: /secrets/legacy_ed25519
            known_hosts_path: /etc/ssh/ssh_known_hosts
        """,
    )
    sources = load_sources(path, offline_shared())
    assert set(sources) == {"partner", "legacy"}
    partner = sources["partner"]
    assert partner.key_prefix == "partner-a/"
    assert (partner.policy.compression, partner.policy.after_copy) == ("zstd", "move")
    assert partner.concurrency == 2
    assert sources["legacy"].key_prefix == "legacy/"
    assert sources["legacy"].connection.private_key == "/secrets/legacy_ed25519"
    # The secret is a reference, resolved only when the resource is used.
    assert "s3cr3t-from-env" not in repr(partner.model_dump())


def documented_examples() -> dict[str, str]:
    """The sources-file examples a user copies: sources.py's docstring and the README's."""
    docstring = sources_module.__doc__
    start = docstring.index("    sources:\n")
    readme = (PROJECT / "README.md").read_text()
    at = readme.index("```yaml\nsources:\n") + len("```yaml\n")
    return {
        "sources.py": textwrap.dedent(docstring[start : docstring.index("\n\n", start)]),
        "README.md": readme[at : readme.index("```", at)],
    }


@pytest.mark.parametrize("where", ["sources.py", "README.md"])
def test_the_documented_examples_load(tmp_path, monkeypatch, where):
    text = documented_examples()[where]
    for variable in re.findall(r"\{env: (\w+)\}", text):
        monkeypatch.setenv(variable, "set")
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    assert set(load_sources(path, offline_shared())) == {"partner_a", "legacy"}


def test_a_sources_file_source_names_its_settings_as_the_file_sets_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PEM_TEXT", "-----BEGIN OPENSSH PRIVATE KEY-----")
    path = write_sources(
        tmp_path,
        """
        sources:
          by_path: {host: a.example, username: u, private_key_path: /keys/a}
          by_text: {host: b.example, username: u, private_key: {env: PEM_TEXT}}
        """,
    )
    sources = load_sources(path, offline_shared())
    for name, key in [("by_path", "private_key_path"), ("by_text", "private_key")]:
        names = sources[name].connection.settings.names
        assert names("private_key") == f"`{key}` of source {name} in {path}"
        assert names("password") == f"`password` of source {name} in {path}"  # not set: its key
        assert names("root") == f"`root` of source {name} in {path}"


@pytest.mark.parametrize(
    "entry, message",
    [
        ("password: hunter2", "must be a reference to an environment variable"),
        ("colour: blue", "unknown settings ['colour']"),
        ("after_copy: move", "after_copy: move needs archive_dir"),
        ("{after_copy: move, archive_dir: /data/in/done}", "is inside root"),
        ("compression: lzma", "compression"),
        ("private_key: '-----BEGIN OPENSSH PRIVATE KEY-----'", "never the secret itself"),
        ("password: {env: NO_SUCH_VARIABLE_X}", "NO_SUCH_VARIABLE_X, which is not set"),
        # Every variable not set, in one message.
        (
            "{password: {env: NO_SUCH_VARIABLE_X}, port: {env: NO_SUCH_VARIABLE_Y}}",
            "NO_SUCH_VARIABLE_X, which is not set; `port` refers to the environment variable "
            "NO_SUCH_VARIABLE_Y, which is not set",
        ),
        ("port: twenty-two", "`port`: Input should be a valid integer"),
    ],
)
def test_a_wrong_sources_file_is_refused_naming_the_file_the_source_and_the_fix(
    tmp_path, entry, message
):
    settings = entry[1:-1].split(", ") if entry.startswith("{") else [entry]
    lines = "".join(f"\n    {setting}" for setting in settings)
    path = tmp_path / "sources.yaml"
    path.write_text(
        f"sources:\n  broken:\n    host: h\n    username: u\n    root: /data/in{lines}\n"
    )
    with pytest.raises(SourcesError) as error:
        load_sources(path, offline_shared())
    assert str(path) in str(error.value) and "'broken'" in str(error.value)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "expected a mapping `sources:` of named sources"),
        ("sources: {}", "expected a mapping `sources:` of named sources"),
        ("- partner\n- legacy\n", "expected a mapping `sources:` of named sources"),
        ("sources: {partner: [unclosed", "cannot read the sources file"),
        ("sources:\n  1st: {host: h, username: u}\n", "names are letters, digits and _"),
        ("sources:\n  partner: sftp.example.com\n", "expected a mapping of settings"),
    ],
)
def test_a_sources_file_of_the_wrong_shape_is_refused_naming_it(tmp_path, text, message):
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    with pytest.raises(SourcesError, match=message) as error:
        load_sources(path, offline_shared())
    assert str(path) in str(error.value)


def test_a_missing_sources_file_is_refused_naming_it(tmp_path):
    with pytest.raises(SourcesError, match="cannot read the sources file") as error:
        load_sources(tmp_path / "nowhere.yaml", offline_shared())
    assert str(tmp_path / "nowhere.yaml") in str(error.value)


def test_each_source_has_its_own_resource_key():
    assert source_key("partner_a") == "source_partner_a" != source_key("partner_b")
