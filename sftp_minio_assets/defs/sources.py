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
        destination_prefix: partner-a   # objects under MINIO_PREFIX/partner-a/...
        # or the whole key under MINIO_PREFIX, from a template (policy/destinations.py):
        # destination_template: "partner-a/{mtime:%Y/%m/%d}/{path}"
        max_workers: 2
        compression: gzip          # none (default), gzip or zstd
        after_copy: move           # keep (default), delete, or move to archive_dir
        archive_dir: /archive
      legacy:
        host: {env: LEGACY_SFTP_HOST}
        username: batch
        password: {env: LEGACY_SFTP_PASSWORD}   # secrets only as references to variables
        host_key_sha256: "SHA256:..."

Secrets (`password`, `private_key`, `pgp_private_key`, `pgp_passphrase`) must be
`{env: NAME}`: a literal secret in the file is refused. Any other value may be a reference too.
Every value, referenced ones included, is checked when the file is loaded, and so is the rule
that no two sources write to the same objects (as far as destinations can be known before
files are: see refuse_shared_destinations). Without SOURCES_FILE, the SFTP_* variables make
one source named `default`.
"""

import itertools
import os
import re
from pathlib import Path

import dagster as dg
import yaml

from ..worker.errors import SettingsError
from .environment import checked, each_checked, source_from_env, source_resource, with_variables
from .resources import SourceResource
from .source_config import SFTPConnection, SourcePolicyConfig

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
SECRETS = ("password", "private_key", "pgp_private_key", "pgp_passphrase")
# A source's keys: its connection's and its policy's settings, and private_key_path (the key
# as a file); not the connection's record of how they were spelled.
NAMING = {"settings_in", "setting_keys"}
FIELDS = {*SFTPConnection.model_fields, *SourcePolicyConfig.model_fields, "private_key_path"}
FIELDS -= NAMING


class SourcesError(SettingsError):
    """The sources file is wrong; the message names the file, the source and the fix."""


def source_key(source: str) -> str:
    """The resource key of a source's SourceResource."""
    return f"source_{source}"


def source_of(
    context: dg.AssetExecutionContext | dg.OpExecutionContext | dg.SensorEvaluationContext,
    source: str,
) -> SourceResource:
    """The source's SourceResource, as the asset, the sensor and the dry run get it."""
    return getattr(context.resources, source_key(source))


def sources_from_env(shared: dict[str, dg.ConfigurableResource]) -> dict[str, SourceResource]:
    """The sources, from SOURCES_FILE or else the SFTP_* variables, each with the resources all
    sources share (environment.shared_resources_from_env)."""
    path = os.environ.get("SOURCES_FILE")
    if path:
        return load_sources(Path(path), shared)
    return {"default": source_from_env(shared)}


def load_sources(
    path: Path, shared: dict[str, dg.ConfigurableResource]
) -> dict[str, SourceResource]:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SourcesError(f"{path}: cannot read the sources file: {exc}") from exc
    entries = (document or {}).get("sources") if isinstance(document, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise SourcesError(f"{path}: expected a mapping `sources:` of named sources")
    checked_sources = {name: check_source(path, name, entry) for name, entry in entries.items()}
    refuse_shared_destinations(
        path, {name: destination for name, (_, _, destination) in checked_sources.items()}
    )
    return {
        name: source_resource(name, connection, policy, shared)
        for name, (connection, policy, _) in checked_sources.items()
    }


def check_source(
    path: Path | str, name: object, entry: object
) -> tuple[SFTPConnection, SourcePolicyConfig, str]:
    """The source's connection and policy as Dagster gets them, and its destination; all
    checked with their references resolved. path: the sources file or the component's
    defs.yaml, which every message names, with the source and the key."""
    where = f"{path}: source {name!r}"
    if not isinstance(name, str) or not NAME.match(name):
        raise SourcesError(f"{where}: names are letters, digits and _, starting with a letter")
    if not isinstance(entry, dict):
        raise SourcesError(f"{where}: expected a mapping of settings")
    unknown = sorted(set(entry) - FIELDS)
    if unknown:
        raise SourcesError(f"{where}: unknown settings {unknown}; known: {sorted(FIELDS)}")
    unset = [
        f"`{key}` refers to the environment variable {value['env']}, which is not set"
        for key, value in entry.items()
        if _is_reference(value) and not os.environ.get(value["env"])
    ]
    if unset:  # all at once: a new source's variables are often set one by one
        raise SourcesError(f"{where}: " + "; ".join(unset))
    keys, values, variables = {}, {}, {}
    for key, value in entry.items():
        field = "private_key" if key == "private_key_path" else key
        keys[field] = key
        if _is_reference(value):
            variables[field] = value["env"]
        elif key in SECRETS:
            raise SourcesError(
                f"{where}: `{key}` must be a reference to an environment variable, "
                f'`{key}: {{env: NAME}}` in a sources file, `{key}: "{{{{ env.NAME }}}}"` in '
                "a component's defs.yaml, never the secret itself"
            )
        else:
            values[field] = value
    naming = _naming(keys, variables)

    # Messages name each setting as written here: "`password` of source partner_a in <path>".
    values |= {"settings_in": f"source {name} in {path}", "setting_keys": keys}

    def part(cls):
        """cls's settings of the entry: checked (plain), and as Dagster gets them."""
        mine = {field: value for field, value in values.items() if field in cls.model_fields}
        referred = {f: variable for f, variable in variables.items() if f in cls.model_fields}
        resolved = {field: os.environ[variable] for field, variable in referred.items()}
        plain = checked(cls, {**mine, **resolved}, naming)
        return plain, with_variables(plain, mine, referred)

    try:
        parts = each_checked(
            connection=lambda: part(SFTPConnection), policy=lambda: part(SourcePolicyConfig)
        )
    except SettingsError as exc:
        raise SourcesError(f"{where}: {exc}") from None
    (_, connection), (policy, as_given) = parts["connection"], parts["policy"]
    return connection, as_given, policy.for_worker(name).key_prefix("")


def _naming(keys: dict[str, str], variables: dict[str, str]):
    """How an error names a field: the key as written, and the variable it refers to."""

    def name(field: str) -> str:
        variable = f" (environment variable {variables[field]})" if field in variables else ""
        return f"`{keys.get(field, field)}`{variable}"

    return name


def refuse_shared_destinations(path: Path | str, destinations: dict[str, str]) -> None:
    """Objects are MINIO_PREFIX/destination/path, or MINIO_PREFIX/<template filled in>: two
    sources whose keys may begin alike could write the same object, each overwriting the
    other's copy. destinations: what each source's keys begin with for sure (its
    destination_prefix or name and a `/`, or its template's constant beginning, "" when the
    template begins with a field other than {source}); two may overlap when one begins with
    the other. What the fields become is known only file by file: the claim refuses a key
    that another source's file holds."""
    for (a, at), (b, bt) in itertools.combinations(destinations.items(), 2):
        if at.startswith(bt) or bt.startswith(at):
            raise SourcesError(
                f"{path}: sources {a!r} and {b!r} may write to the same objects: their keys "
                f"begin with {at!r} and {bt!r}, which are the same or one begins with the other "
                "(from destination_prefix, or the source's name when unset, or the constant "
                "beginning of destination_template); give each source a first folder of its "
                "own, e.g. destination_prefix: partner-a, or destination_template: "
                "partner-a/{path} (or {source}/{path})"
            )


def _is_reference(value: object) -> bool:
    return isinstance(value, dict) and set(value) == {"env"} and isinstance(value["env"], str)
