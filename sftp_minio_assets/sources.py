"""Where files come from: one source from the SFTP_* variables, or several from a YAML file.

With SOURCES_FILE set, each entry under `sources:` is a named source with its own server,
root, filters, destination prefix, concurrency, compression and after-copy action:

    sources:
      partner_a:
        host: sftp.partner-a.example
        username: ingest
        private_key_path: /secrets/partner_a_ed25519
        known_hosts_path: /etc/ssh/ssh_known_hosts
        root: /outgoing
        include: ["*.csv"]
        prefix: partner-a          # objects under MINIO_PREFIX/partner-a/...
        max_workers: 2
        compression: gzip          # none (default), gzip or zstd
        after_copy: move           # keep (default), delete, or move to archive_dir
        archive_dir: /archive
      legacy:
        host: {env: LEGACY_SFTP_HOST}
        username: batch
        password: {env: LEGACY_SFTP_PASSWORD}   # secrets only as references to variables
        host_key_sha256: "SHA256:..."

Secrets (`password`, `private_key`) must be `{env: NAME}`: a literal secret in the file is
refused. Any other value may be a reference too. Without SOURCES_FILE, the SFTP_* variables
make one source named `default`.
"""

import os
import re
from pathlib import Path

import dagster as dg
import yaml

from .resources import SFTPResource, source_from_env

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
SECRETS = ("password", "private_key")
FIELDS = set(SFTPResource.model_fields) | {"private_key_path"}


class SourcesError(ValueError):
    """The sources file is wrong; the message names the file, the source and the fix."""


def sftp_key(source: str) -> str:
    """The resource key of a source's SFTPResource."""
    return f"sftp_{source}"


def sources_from_env() -> dict[str, SFTPResource]:
    path = os.environ.get("SOURCES_FILE")
    if path:
        return load_sources(Path(path))
    return {"default": source_from_env()}


def load_sources(path: Path) -> dict[str, SFTPResource]:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SourcesError(f"{path}: cannot read the sources file: {exc}") from exc
    entries = (document or {}).get("sources") if isinstance(document, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise SourcesError(f"{path}: expected a mapping `sources:` of named sources")
    return {name: _source(path, name, entry) for name, entry in entries.items()}


def _source(path: Path, name: object, entry: object) -> SFTPResource:
    where = f"{path}: source {name!r}"
    if not isinstance(name, str) or not NAME.match(name):
        raise SourcesError(f"{where}: names are letters, digits and _, starting with a letter")
    if not isinstance(entry, dict):
        raise SourcesError(f"{where}: expected a mapping of settings")
    unknown = sorted(set(entry) - FIELDS)
    if unknown:
        raise SourcesError(f"{where}: unknown settings {unknown}; known: {sorted(FIELDS)}")
    values = {}
    for field, value in entry.items():
        if field in SECRETS and not _is_reference(value):
            raise SourcesError(
                f"{where}: `{field}` must be a reference to an environment variable, "
                f"`{field}: {{env: NAME}}`, never the secret itself"
            )
        values["private_key" if field == "private_key_path" else field] = _resolve(value)
    try:
        source = SFTPResource(**values)
    except Exception as exc:
        raise SourcesError(f"{where}: {exc}") from exc
    if error := source.policy_error():  # settings each valid, but wrong together
        raise SourcesError(f"{where}: {error}")
    return source


def _is_reference(value: object) -> bool:
    return isinstance(value, dict) and set(value) == {"env"} and isinstance(value["env"], str)


def _resolve(value: object) -> object:
    return dg.EnvVar(value["env"]) if _is_reference(value) else value
