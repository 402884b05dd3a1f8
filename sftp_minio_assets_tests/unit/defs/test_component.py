"""SftpSource's attributes as Dagster resolves them from a defs.yaml: references kept as
references, secrets kept as written for the source's checks to refuse, the rest templated."""

import pytest

from sftp_minio_assets import SftpSource, TransferMonitor
from sftp_minio_assets.defs.sources import FIELDS, SECRETS


def resolved(yaml_text: str) -> SftpSource:
    return SftpSource.resolve_from_yaml(yaml_text)


def test_every_setting_of_a_source_is_an_attribute():
    fields = set(SftpSource.model().model_fields)
    assert fields >= FIELDS
    assert fields - FIELDS == {"name", "group", "owners", "description"}


@pytest.mark.parametrize(
    "written",
    ['"{{ env.ACME_PASSWORD }}"', "'{{env.ACME_PASSWORD}}'", "\"{{ env('ACME_PASSWORD') }}\""],
)
def test_an_env_template_stays_a_reference_to_the_variable(written, monkeypatch):
    # Set or not, the variable is not read here: the source's checks read it, by name.
    monkeypatch.delenv("ACME_PASSWORD", raising=False)
    source = resolved(f"host: h\nusername: u\npassword: {written}\n")
    assert source.settings() == {"host": "h", "username": "u", "password": {"env": "ACME_PASSWORD"}}


def test_a_secret_written_out_is_kept_for_the_checks_to_refuse():
    # Dagster's templating is not applied to it: "{{" in a written-out password stays as is.
    source = resolved("host: h\nusername: u\npassword: 'hunter{{2}}'\n")
    assert source.settings()["password"] == "hunter{{2}}"
    assert {"password", "private_key", "pgp_private_key", "pgp_passphrase"} == set(SECRETS)


def test_other_templates_are_rendered_as_dagster_renders_them(monkeypatch):
    monkeypatch.setenv("ACME_ROOT", "/outgoing")
    source = resolved('host: h\nusername: u\nroot: "{{ env.ACME_ROOT }}/today"\nport: 2222\n')
    assert source.settings()["root"] == "/outgoing/today"
    assert source.settings()["port"] == 2222


def test_the_attributes_that_are_not_settings():
    source = resolved("name: acme\ngroup: partners\nowners: ['team:data']\nhost: h\n")
    assert (source.name, source.group, source.owners) == ("acme", "partners", ["team:data"])
    assert source.settings() == {"host": "h"}


def test_the_monitor_takes_no_attribute():
    assert set(TransferMonitor.model().model_fields) == set()
