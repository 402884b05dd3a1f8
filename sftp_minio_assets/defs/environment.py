"""The resources as environment variables set them (the README lists them): each value checked
at load, and one SettingsError naming every wrong variable, never repeating a secret."""

import os
from collections.abc import Callable
from typing import Any, TypeVar

import dagster as dg
from pydantic import ValidationError

from ..sftp.client import (
    VARIABLES,
)
from ..worker.errors import SettingsError
from .resources import (
    AlertSettings,
    ObjectStoreResource,
    SourceResource,
    TransferLogResource,
    TransferSettings,
)
from .source_config import SFTPConnection, SourcePolicyConfig

R = TypeVar("R", bound=dg.Config)

# Fields whose values no message repeats: secrets, and URLs that may carry one.
UNECHOED = {
    *("password", "private_key", "access_key", "secret_key"),
    *("pgp_private_key", "pgp_passphrase", "pgp_verify_key"),
    *("url", "endpoint_url", "webhook_url"),
}


def checked(cls: type[R], values: dict[str, object], name: Callable[[str], str]) -> R:
    """cls(**values), or a SettingsError naming each wrong field as name(field) does."""
    try:
        return cls(**values)
    except ValidationError as exc:
        # Not chained: pydantic's own message repeats the values, secrets included.
        problems = [_problem(error, name) for error in exc.errors()]
    raise SettingsError("; ".join(problems))


def _problem(error: Any, name: Callable[[str], str]) -> str:
    if error["type"] == "value_error":
        text = str(error["ctx"]["error"])
    elif error["type"] == "missing" or error["input"] is None:
        text = "required, and not set"
    else:
        text = error["msg"]
    # Settings wrong together (SourcePolicyConfig.problem) have no single field.
    return f"{name(str(error['loc'][0]))}: {text}" if error["loc"] else text


def with_variables(plain: R, values: dict[str, object], variables: dict[str, str]) -> R:
    """plain, checked, again, with each field read from an environment variable passed as
    Dagster's EnvVar where the field's type has one: the UI shows where the value comes from,
    and secrets stay out of the run's configuration."""
    cls = type(plain)
    from_variables: dict[str, object] = {}
    for field, variable in variables.items():
        annotation = cls.model_fields[field].annotation
        if annotation in (str, str | None):
            from_variables[field] = dg.EnvVar(variable)
        elif annotation in (int, int | None):
            from_variables[field] = dg.EnvVar.int(variable)
        else:  # there is no EnvVar for floats, flags or choices: the value checked at load
            from_variables[field] = getattr(plain, field)
    return cls(**values, **from_variables)


def from_environment(cls: type[R], variables: dict[str, str], **values: object) -> R:
    """cls with each field of `variables` read from the environment variable it names when that
    is set (else the field's default applies, stated once on the class), and `values` as given.
    Checked now, so that a value that can never work fails the load naming its variable."""
    given = {field: name for field, name in variables.items() if os.environ.get(name)}

    def name(field: str) -> str:
        variable = variables.get(field, field)
        if field in UNECHOED or field not in given:
            return variable
        return f"{variable}={os.environ[variable]!r}"

    plain = checked(cls, {**values, **{f: os.environ[v] for f, v in given.items()}}, name)
    return with_variables(plain, values, given)


def _given(**values):
    """The values that are set; each field's default, stated once on the class, covers the rest."""
    return {name: value for name, value in values.items() if value is not None}


def _floats(name: str) -> list[float] | None:
    """A comma-separated list of numbers, or None when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return [float(part) for part in value.split(",")]
    except ValueError:
        raise SettingsError(f"{name}={value!r}: expected numbers separated by commas") from None


def _globs(name: str) -> list[str]:
    return [p.strip() for p in os.environ.get(name, "").split(",") if p.strip()]


def source_from_env(shared: dict[str, dg.ConfigurableResource]) -> SourceResource:
    """The single source that the SFTP_* variables describe (named `default`), with the
    resources all sources share (shared_resources_from_env)."""
    parts = each_checked(
        connection=lambda: from_environment(SFTPConnection, _variables_of(SFTPConnection)),
        policy=lambda: from_environment(
            SourcePolicyConfig,
            _variables_of(SourcePolicyConfig),
            include=_globs("SFTP_INCLUDE"),
            exclude=_globs("SFTP_EXCLUDE"),
            **_given(pgp_suffixes=_globs("SFTP_PGP_SUFFIXES") or None),
        ),
    )
    connection, policy = parts["connection"], parts["policy"]
    if not isinstance(connection, SFTPConnection) or not isinstance(policy, SourcePolicyConfig):
        raise TypeError("source_from_env: expected an SFTPConnection and a SourcePolicyConfig")
    return source_resource("default", connection, policy, shared)


def _variables_of(cls: type[dg.Config]) -> dict[str, str]:
    """The SFTP_* (and other) variables that set cls's fields for the single source."""
    return {field: variable for field, variable in VARIABLES.items() if field in cls.model_fields}


def source_resource(
    name: str,
    connection: SFTPConnection,
    policy: SourcePolicyConfig,
    shared: dict[str, dg.ConfigurableResource],
) -> SourceResource:
    """The source's resource: its own connection and policy, and the shared resources it uses."""
    return SourceResource(
        name=name,
        connection=connection,
        policy=policy,
        **{key: shared[key] for key in ("minio", "transfer_log", "transfer_settings")},
    )


def shared_resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """The resources every source shares, as the environment variables in the README set them;
    one SettingsError names every wrong variable."""
    return each_checked(
        minio=lambda: from_environment(
            ObjectStoreResource,
            {
                "endpoint_url": "MINIO_ENDPOINT_URL",
                "access_key": "MINIO_ACCESS_KEY",
                "secret_key": "MINIO_SECRET_KEY",
                # BUCKET_NAME: its name in the Airflow DAG this project replaces.
                "bucket": "MINIO_BUCKET" if os.environ.get("MINIO_BUCKET") else "BUCKET_NAME",
                "prefix": "MINIO_PREFIX",
                "region": "MINIO_REGION",
                "timeout_seconds": "MINIO_TIMEOUT_SECONDS",
            },
        ),
        transfer_log=lambda: from_environment(
            TransferLogResource,
            {"url": "TRANSFER_DB_URL", "max_stale_lock_minutes": "MAX_STALE_LOCK_MINUTES"},
        ),
        transfer_settings=lambda: from_environment(
            TransferSettings,
            {
                "max_workers": "MAX_WORKERS",
                "local_dir": "LOCAL_DIR",
                "resume_min_mb": "RESUME_MIN_MB",
                "retries": "TRANSFER_RETRIES",
                "max_partitions_per_run": "MAX_PARTITIONS_PER_RUN",
                "parallel_runs": "PARALLEL_RUNS",
                "partition_retention_days": "PARTITION_RETENTION_DAYS",
                "auto_retry_limit": "AUTO_RETRY_LIMIT",
            },
            **_given(auto_retry_backoff_minutes=_floats("AUTO_RETRY_BACKOFF_MINUTES")),
        ),
        alerts=lambda: from_environment(
            AlertSettings,
            {"webhook_url": "ALERT_WEBHOOK_URL", "after_failures": "ALERT_AFTER_FAILURES"},
        ),
    )


T = TypeVar("T")


def each_checked(**builds: Callable[[], T]) -> dict[str, T]:
    """Each build's result by name; or one SettingsError naming what every failing build found."""
    built: dict[str, T] = {}
    problems: list[str] = []
    for name, build in builds.items():
        try:
            built[name] = build()
        except SettingsError as exc:
            problems.append(str(exc))
    if problems:
        raise SettingsError("; ".join(problems))
    return built
