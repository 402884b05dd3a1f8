"""A source as a Dagster component: `type: sftp_minio_assets.SftpSource` in a `defs.yaml`.

    type: sftp_minio_assets.SftpSource
    attributes:
      name: acme                         # default: the folder of this defs.yaml
      host: sftp.acme.example
      username: ingest
      private_key: "{{ env.ACME_SFTP_KEY }}"   # secrets only as {{ env.NAME }}
      known_hosts_path: /etc/ssh/ssh_known_hosts
      root: /outgoing
      include: ["*.csv"]

Its attributes are the sources file's keys (defs/sources.py), checked by the same code with the
same messages, which name the defs.yaml and the key. Every source, whether a component of a `dg`
project or an entry of the standalone code location's SOURCES_FILE or its SFTP_* variables, gets
its definitions from SftpSource.definitions: the files asset, its sensor, its checks and its dry
run. The bucket, the transfer log and the shared settings are resources all sources share, set by
the environment variables the README lists (MINIO_*, TRANSFER_DB_URL, ...).
The statistics and the alerts, once per project, are the TransferMonitor component.
"""

import os
import re
import threading
from contextlib import suppress
from pathlib import Path
from typing import Annotated, Any, ClassVar, get_args, get_origin

import dagster as dg
import yaml
from pydantic import BaseModel, PrivateAttr

from .alerts import alert_on_recovery, alert_on_repeated_failures
from .assets import build_files_asset
from .checks import build_file_checks
from .dry_run import build_dry_run_job
from .environment import shared_resources_from_env
from .resources import SourceResource
from .sensors import build_new_files_sensor
from .source_config import SFTPConnection, SourcePolicyConfig
from .sources import FIELDS, NAME, SECRETS, SourcesError, check_source, refuse_shared_destinations
from .stats import build_health_job, build_health_schedule, transfer_stats

# `{{ env.NAME }}` (or `{{ env("NAME") }}`), the whole value: Dagster's templating of a variable.
ENV_TEMPLATE = re.compile(
    r"""^\{\{\s*env(?:\.([A-Za-z_][A-Za-z0-9_]*)|\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*\))\s*\}\}$"""
)


def _setting(field: str):
    """The resolver of one setting: `{{ env.NAME }}` stays a reference to the variable, as
    `{env: NAME}` in a sources file (the value is read, checked and passed to Dagster as an
    EnvVar, so the UI shows the variable, not the value); anything else is Dagster's templating
    as usual, but for a secret written out, which is kept as written for check_source to refuse
    (refused here, Dagster's message would quote the line of the YAML, secret included)."""

    def resolve(context: dg.ResolutionContext, raw: Any) -> Any:
        if isinstance(raw, str) and (match := ENV_TEMPLATE.match(raw.strip())):
            return {"env": match.group(1) or match.group(2)}
        return raw if field in SECRETS else context.resolve_value(raw)

    return resolve


def _yaml_type(field: str) -> Any:
    """What YAML may give for a setting: its type, or a template string; anything for a secret,
    which check_source refuses unless it is a reference (Dagster's own message for a wrong type
    would quote the value)."""
    if field in SECRETS:
        return Any
    if field == "private_key_path":
        return str | None
    info = (SFTPConnection.model_fields | SourcePolicyConfig.model_fields)[field]
    annotation = info.annotation
    if get_origin(annotation) is list:  # list[Annotated[str, check]]: the checks are ours
        annotation = list[str]
    elif get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation | str | None


def _description(field: str) -> str | None:
    if field == "private_key_path":
        return "The private key's file (or private_key)."
    info = (SFTPConnection.model_fields | SourcePolicyConfig.model_fields)[field]
    return info.description


class _SourceAttributes(dg.Component, dg.Resolvable, dg.Model):
    """The attributes that are not a source's settings."""

    name: str | None = None
    group: str | None = None
    owners: list[str] | None = None
    description: str | None = None


# The settings, one attribute each, from the settings' own classes: a new setting is added there.
SftpSourceBase: Any = type(
    "SftpSourceBase",
    (_SourceAttributes,),
    {
        "__annotations__": {
            field: Annotated[
                Any,
                dg.Resolver(
                    _setting(field),
                    model_field_type=_yaml_type(field),
                    description=_description(field),
                    # The value as written: `{{ env.NAME }}` is seen before it is rendered.
                    inject_before_resolve=False,
                ),
            ]
            for field in sorted(FIELDS)
        },
        **dict.fromkeys(FIELDS),
        "__module__": __name__,
    },
)


SCAFFOLD = """\
# A source: files of one SFTP folder copied to the bucket once each (sftp_minio_assets.SftpSource).
# Every key of a SOURCES_FILE entry is an attribute here; the README lists them all.
# The bucket and the transfer log are shared by all sources, from MINIO_* and TRANSFER_DB_URL.
type: {type_name}

attributes:
  name: {name}                    # the asset is {name}/files, its sensor new_files_{name}
  host: sftp.example.com          # required
  # port: 22
  username: ingest                # required
  # Secrets only as references to environment variables, never written out here:
  private_key: "{{{{ env.{upper}_SFTP_KEY }}}}"
  # password: "{{{{ env.{upper}_SFTP_PASSWORD }}}}"   # the password, or the key's passphrase
  # The server's key: one of known_hosts_path or host_key_sha256 (required).
  known_hosts_path: /etc/ssh/ssh_known_hosts
  # host_key_sha256: "SHA256:..."
  root: /outgoing                 # the folder to copy from
  # include: ["*.csv"]
  # exclude: ["*.tmp"]
  # destination_prefix: {name}   # objects under MINIO_PREFIX/{name}/...
  # max_workers: 4                # files copied at once per run
  # max_sessions: 4               # SSH connections to this server, all runs together
  # ready_marker: "{{name}}.done"
  # compression: gzip             # none, gzip or zstd
  # after_copy: keep              # keep, delete, or move to archive_dir
  # transfer_window: "20:00-06:00 Europe/Paris"
  # group: {name}                 # the asset's group in the UI; owners: ["team:data"]
"""


class SftpSourceScaffolder(dg.Scaffolder):
    """`dg scaffold defs sftp_minio_assets.SftpSource partners/acme`: a defs.yaml with the
    required keys filled with examples, and the common ones commented."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        name = re.sub(r"\W", "_", request.target_path.name)
        if not NAME.match(name):  # a source's name begins with a letter
            name = f"source_{name}"[:64]
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "defs.yaml").write_text(
            SCAFFOLD.format(type_name=request.type_name, name=name, upper=name.upper())
        )


@dg.scaffold_with(SftpSourceScaffolder)
class SftpSource(SftpSourceBase):
    """Files of one SFTP server folder, copied into the bucket once each, one dynamic partition
    per file: an asset `<name>/files`, a sensor `new_files_<name>` that adds partitions and
    requests runs, its checks and a `dry_run_<name>` job."""

    SETTINGS: ClassVar[frozenset[str]] = frozenset(FIELDS)
    _resource: SourceResource | None = PrivateAttr(default=None)
    # Keys that are no attribute: refused by check_source, by name. Dagster's own refusal of an
    # unknown key quotes its value, which a misspelled secret's key would print.
    _unknown: list[str] = PrivateAttr(default_factory=list)

    @classmethod
    def model(cls) -> type[BaseModel]:
        return _taking_unknown_keys(super().model())

    @classmethod
    def resolve_from_model(cls, context: dg.ResolutionContext, model: BaseModel) -> "SftpSource":
        source = super().resolve_from_model(context, model)
        source._unknown = sorted(model.model_extra or {})
        return source

    @classmethod
    def of_resource(cls, resource: SourceResource) -> "SftpSource":
        """The source whose resource is built already: the standalone code location's single
        source of the SFTP_* variables (environment.source_from_env checked them)."""
        source = cls(name=resource.name)
        source._resource = resource
        return source

    def settings(self) -> dict[str, Any]:
        """The settings given, as a sources file's entry has them (unknown keys without their
        values)."""
        given = {f: getattr(self, f) for f in self.SETTINGS if getattr(self, f) is not None}
        return {**given, **dict.fromkeys(self._unknown)}

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        where = _place(context)
        name = self.name or context.path.name
        resource, destination = self.checked(_shown(where), name)
        _LOADED.register(where, name, destination)
        return self.definitions(resource)

    def checked(self, where: Path | str, name: str) -> tuple[SourceResource, str]:
        """The source's resource and where its objects begin, checked as a sources file's
        entry is; a SourcesError names `where`, the source and the key."""
        if not NAME.match(name):
            raise SourcesError(
                f"{where}: source {name!r}: names are letters, digits and _, starting with a "
                "letter; set `name:` or rename the folder"
            )
        connection, policy, destination = check_source(where, name, self.settings())
        shared = shared_resources()
        return SourceResource(
            name=name,
            connection=connection,
            policy=policy,
            **{key: shared[key] for key in ("minio", "transfer_log", "transfer_settings")},
        ), destination

    def definitions(self, resource: SourceResource | None = None) -> dg.Definitions:
        """The source's asset, sensor, checks and dry run, with the resources they use."""
        resource = resource or self._resource
        if resource is None:
            raise TypeError("SftpSource.definitions: the source is not checked yet")
        name = resource.name
        files = build_files_asset(
            name, group=self.group, owners=self.owners or (), description=self.description
        )
        return dg.Definitions(
            assets=[files],
            asset_checks=build_file_checks(files, name),
            jobs=[build_dry_run_job(name)],
            sensors=[build_new_files_sensor(name, files)],
            resources={**shared_resources(), f"source_{name}": resource},
        )


class TransferMonitor(dg.Component, dg.Resolvable, dg.Model):
    """Once per project: the `transfer_stats` asset, the `transfer_health` job and schedule (the
    statistics and every source's checks, every 15 minutes), and the alerts on repeated failures
    and on recovery, all from the transfer log the sources share."""

    def build_defs(self, context: dg.ComponentLoadContext | None = None) -> dg.Definitions:
        health = build_health_job()
        return dg.Definitions(
            assets=[transfer_stats],
            jobs=[health],
            schedules=[build_health_schedule(health)],
            sensors=[alert_on_repeated_failures, alert_on_recovery],
            resources=shared_resources(),
        )


_SHARED: dict[tuple, dict[str, dg.ConfigurableResource]] = {}
_SHARED_LOCK = threading.Lock()


def shared_resources() -> dict[str, dg.ConfigurableResource]:
    """The resources all sources share, from the environment: the same objects for every
    component loaded with the same environment, as Dagster merges resources of one key only when
    they are one object."""
    key = tuple(sorted(os.environ.items()))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED.clear()
            _SHARED[key] = shared_resources_from_env()
        return _SHARED[key]


# Where a component is declared: its defs.yaml, and the document's index in it.
Place = tuple[Path, int | str | None]


def _place(context: dg.ComponentLoadContext) -> Place:
    """From Dagster's ComponentPath (not exported): a folder, or the YAML file itself."""
    path, document = context.component_path.file_path, context.component_path.instance_key
    return (path / "defs.yaml" if path.is_dir() else path), document


def _shown(where: Place) -> str:
    """The defs.yaml, and which of its documents when it holds several."""
    path, document = where
    with suppress(OSError, yaml.YAMLError):
        if isinstance(document, int) and len(list(yaml.safe_load_all(path.read_text()))) > 1:
            return f"{path} (document {document + 1})"
    return str(path)


class _Loaded:
    """The sources loaded in this process, by the defs.yaml (and document) declaring each: no two
    may have one name or write the same objects. Each load of a component replaces its entry; an
    entry whose file is gone (the component removed, the code reloaded) is forgotten."""

    def __init__(self) -> None:
        self._by_place: dict[Place, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def register(self, where: Place, name: str, destination: str) -> None:
        with self._lock:
            self._by_place = {p: e for p, e in self._by_place.items() if p[0].exists()}
            self._by_place[where] = (name, destination)
            others = [(p, e) for p, e in self._by_place.items() if p != where]
        for other, (other_name, other_destination) in others:
            if other_name == name:
                raise SourcesError(
                    f"{_shown(where)}: source {name!r} is also defined in {_shown(other)}; give "
                    "each source a name of its own (`name:`)"
                )
            refuse_shared_destinations(
                f"{_shown(where)} and {_shown(other)}",
                {name: destination, other_name: other_destination},
            )


def _taking_unknown_keys(model: type[BaseModel]) -> type[BaseModel]:
    """model, keeping keys it does not know (in model_extra) rather than refusing them."""
    if model not in _TAKING:
        _TAKING[model] = type(
            model.__name__,
            (model,),
            {"model_config": {**model.model_config, "extra": "allow"}, "__module__": __name__},
        )
    return _TAKING[model]


_TAKING: dict[type[BaseModel], type[BaseModel]] = {}
_LOADED = _Loaded()
