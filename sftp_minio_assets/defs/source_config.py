"""A source's settings: how to reach its SFTP server (SFTPConnection) and what to do with its
files (SourcePolicyConfig), as sources.yaml or the SFTP_* variables give them."""

import posixpath
from collections.abc import Callable
from typing import Annotated, Literal

import dagster as dg
from pydantic import Field, model_validator

from ..policy.destinations import DestinationTemplate
from ..policy.readiness import ReadyMarker, marker_problem
from ..policy.transfer_window import TransferWindow
from ..s3.store import key_segments
from ..sftp.client import (
    FileFilter,
    SettingNames,
    SFTPSettings,
)
from ..transfer.pgp import DEFAULT_SUFFIXES, PgpSettings, key_problem
from ..worker.source_policy import SourcePolicy
from .validators import (
    ENV_VARS,
    at_least,
    check,
    host_problem,
    parses,
)


class SFTPConnection(dg.ConfigurableResource):
    """How to reach, trust and log in to one SFTP server, and how many sessions it allows."""

    host: Annotated[str, check(host_problem)]
    port: Annotated[
        int, check(lambda port: None if 0 < port < 65536 else "must be a TCP port, 1 to 65535")
    ] = 22
    username: Annotated[str, check(lambda name: None if name.strip() else "must not be empty")]
    password: str | None = Field(default=None, description="Password, or the key's passphrase.")
    private_key: str | None = Field(default=None, description="Key file path or PEM text.")
    known_hosts_path: str | None = None
    host_key_sha256: Annotated[
        str | None,
        check(
            lambda pin: (
                None
                if pin.strip().startswith("SHA256:")
                else 'must be "SHA256:..." as ssh-keygen -lf prints it'
            )
        ),
    ] = Field(default=None, description='Pinned "SHA256:..." key.')
    allow_unknown_host: bool = Field(
        default=False, description="Accept any host key (logged). Never in production."
    )
    transport: Literal["auto", "openssh", "paramiko"] = Field(
        default="auto",
        description="How SSH is done: openssh: OpenSSH's own ssh client under the SFTP code "
        "(2.4x less CPU, 2.2x the read speed; needs the ssh command); paramiko: in Python; "
        "auto: openssh where ssh is installed and the server is under 10 ms away, else paramiko.",
    )
    max_sessions: Annotated[int | None, at_least(1)] = Field(
        default=None,
        description="SSH connections open at once to this server (host:port), every run, "
        "sensor and machine sharing the transfer log together; unset: no limit.",
    )
    # How messages name the source's settings to fix (sftp/client.py: SettingNames), as its
    # user set them.
    settings_in: str = Field(
        default="",
        description='Where the source is set, e.g. "source partner_a in /etc/sources.yaml"; '
        "empty: the SFTP_* environment variables.",
    )
    setting_keys: dict[str, str] = Field(
        default_factory=dict, description="The keys its settings were set with there."
    )

    @property
    def settings(self) -> SFTPSettings:
        return SFTPSettings(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            private_key=self.private_key,
            known_hosts_path=self.known_hosts_path,
            host_key_sha256=self.host_key_sha256,
            allow_unknown_host=self.allow_unknown_host,
            transport=self.transport,
            names=SettingNames(self.settings_in, self.setting_keys),
        )

    @property
    def server(self) -> str:
        """How messages name the server (never with a secret)."""
        return self.settings.server


class SourcePolicyConfig(dg.Config):
    """A source's policy: which of its files are taken, where they go, how many at once, and
    what becomes of them (worker.SourcePolicy is what the worker gets of it)."""

    root: str = "/"
    follow_symlinks: bool = Field(
        default=False, description="Follow links whose target is inside root; else skip them."
    )
    listing: Literal["full", "fast"] = Field(
        default="full",
        description="full: each tick reads every directory. fast: a directory whose files were "
        "all copied is read again only once its mtime changes, or at a full listing; a file "
        "rewritten in place (its directory's mtime unchanged) waits for the full listing.",
    )
    full_listing_every_hours: Annotated[float, at_least(0.01)] = Field(
        default=24, description="With listing fast: how often a tick reads every directory."
    )
    listing_seconds_per_tick: Annotated[float, at_least(0)] = Field(
        default=20,
        description="A tick starts no directory read after listing this long; the next tick "
        "goes on where it stopped (at least one directory is read per tick).",
    )
    include: list[str] = Field(default_factory=list, description="Globs on the relative path.")
    exclude: list[str] = Field(default_factory=list)
    min_file_age_seconds: Annotated[int, at_least(0)] = Field(
        default=60, description="Files modified more recently are left for a later tick."
    )
    destination_prefix: Annotated[
        str | None,
        check(
            lambda prefix: None if key_segments(prefix) else "must name a folder, e.g. partner-a"
        ),
    ] = Field(
        default=None, description="Key prefix under MINIO_PREFIX; default: the source's name."
    )
    destination_template: Annotated[str | None, parses(DestinationTemplate.parse)] = Field(
        default=None,
        description='Object key under MINIO_PREFIX, e.g. "partner-a/{mtime:%Y/%m/%d}/{path}" '
        "(policy/destinations.py); unset: destination_prefix/path.",
    )
    max_workers: Annotated[int | None, at_least(1)] = Field(
        default=None, description="Files copied at once per run; default: MAX_WORKERS."
    )
    transfer_window: Annotated[str | None, parses(TransferWindow.parse)] = Field(
        default=None,
        description='Hours files may be fetched, e.g. "20:00-06:00 Europe/Paris" (UTC when no '
        "time zone is given); unset: any time.",
    )
    compression: Literal["none", "gzip", "zstd"] = Field(
        default="none", description="Compress in flight; the object key gets .gz or .zst."
    )
    after_copy: Literal["keep", "delete", "move"] = Field(
        default="keep", description="What becomes of the remote file once its copy is verified."
    )
    archive_dir: str | None = Field(
        default=None, description="Where after_copy: move puts files, outside root."
    )
    max_bytes_per_second: Annotated[int | None, at_least(1)] = Field(
        default=None,
        description="Bandwidth cap of the source's reads, all its runs together; unset: none.",
    )
    ready_marker: Annotated[str | None, check(marker_problem)] = Field(
        default=None,
        description='Copy a file only once its marker exists: "{name}.done", "{stem}.ok", or '
        '"_SUCCESS" (one per directory); markers are never copied. Unset: no marker.',
    )
    require_stable_listing: bool = Field(
        default=False,
        description="Copy a new or changed file only once two sensor ticks saw the same size "
        "and mtime.",
    )
    server_checksums: bool = Field(
        default=False,
        description="Send each upload's SHA-256 for the S3 server to verify, where it does.",
    )
    pgp_private_key: Annotated[str | None, check(lambda key: key_problem(key, secret=True))] = (
        Field(
            default=None,
            description="Armored PGP private key, or its file's path: files named with "
            "pgp_suffixes are decrypted in flight; unset: copied as they are.",
        )
    )
    pgp_passphrase: str | None = Field(default=None, description="The private key's passphrase.")
    pgp_verify_key: Annotated[str | None, check(lambda key: key_problem(key, secret=False))] = (
        Field(
            default=None,
            description="The partner's armored PGP public key, or its file's path: set, a file "
            "not signed by it is refused.",
        )
    )
    pgp_suffixes: list[
        Annotated[
            str,
            check(lambda suffix: None if len(suffix) > 1 and suffix[0] == "." else "e.g. .pgp"),
        ]
    ] = Field(
        default=list(DEFAULT_SUFFIXES),
        description="Names of encrypted files end so; the object's name is without it.",
    )

    @property
    def marker(self) -> ReadyMarker | None:
        return ReadyMarker(self.ready_marker) if self.ready_marker else None

    @property
    def file_filter(self) -> FileFilter:
        return FileFilter(tuple(self.include), tuple(self.exclude))

    @property
    def window(self) -> TransferWindow | None:
        return TransferWindow.parse(self.transfer_window) if self.transfer_window else None

    def problem(self) -> str | None:
        """What is wrong with the settings together, if anything."""
        if self.destination_prefix and self.destination_template:
            return (
                "destination_prefix and destination_template are both set: a template gives "
                "the whole key under MINIO_PREFIX; begin it with the prefix, e.g. "
                f"{self.destination_prefix.strip('/')}/{{path}}"
            )
        if not self.pgp_private_key and (self.pgp_passphrase or self.pgp_verify_key):
            return "pgp_passphrase and pgp_verify_key need pgp_private_key (SFTP_PGP_PRIVATE_KEY)"
        if self.after_copy != "move":
            return None
        if not self.archive_dir:
            return "after_copy: move needs archive_dir (ARCHIVE_DIR)"
        root, archive = posixpath.normpath(self.root), posixpath.normpath(self.archive_dir)
        if archive == root or archive.startswith(root.rstrip("/") + "/"):
            return (
                f"archive_dir {self.archive_dir} is inside root {self.root}: archived files "
                "would be listed and copied again; choose a directory outside it"
            )
        return None

    @model_validator(mode="wrap")
    @classmethod
    def _settings_fit(cls, values: object, handler: Callable[[object], "SourcePolicyConfig"]):
        policy = handler(values)
        unresolved = isinstance(values, dict) and any(
            isinstance(values.get(name), ENV_VARS)
            for name in ("root", "archive_dir", "destination_prefix", "destination_template")
        )
        if not unresolved and (error := policy.problem()):
            raise ValueError(error)
        return policy

    def for_worker(self, source: str) -> SourcePolicy:
        return SourcePolicy(
            destination=self.destination_prefix or source,
            template=(
                DestinationTemplate.parse(self.destination_template)
                if self.destination_template
                else None
            ),
            source=source,
            window=self.window,
            compression=self.compression,
            after_copy=self.after_copy,
            archive_dir=self.archive_dir,
            root=self.root,
            max_bytes_per_second=self.max_bytes_per_second,
            ready_marker=self.marker,
            file_filter=self.file_filter,
            server_checksums=self.server_checksums,
            pgp=self.pgp,
            min_file_age_seconds=self.min_file_age_seconds,
            require_stable_listing=self.require_stable_listing,
        )

    @property
    def pgp(self) -> PgpSettings | None:
        if not self.pgp_private_key:
            return None
        return PgpSettings(
            self.pgp_private_key,
            self.pgp_passphrase,
            self.pgp_verify_key,
            tuple(self.pgp_suffixes),
        )
