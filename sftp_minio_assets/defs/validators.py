"""The checks of the resources' fields: each says what is wrong with a value, naming an example
of a good one; values given as Dagster's EnvVar are checked when the resource starts."""

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import WrapValidator

from ..db.connection import libpq_url

# What dg.EnvVar and dg.EnvVar.int give: names, resolved by Dagster when the resource starts. A
# field given one is checked then (Dagster builds the resource again from the values), and
# where the variable is read at load (from_environment).
ENV_VARS = (dg.EnvVar, type(dg.EnvVar.int("ANY")))


def check(problem: Callable[[Any], str | None]) -> WrapValidator:
    """A field's check: problem(value) says what is wrong with a value, if anything."""

    def validate(value: object, handler: Callable[[object], Any]) -> Any:
        if isinstance(value, ENV_VARS):
            return handler(value)
        value = handler(value)
        if value is not None and (text := problem(value)):
            raise ValueError(text)
        return value

    return WrapValidator(validate)


def at_least(low: float) -> WrapValidator:
    return check(lambda value: None if value >= low else f"must be at least {low:g}")


def http_url(example: str) -> WrapValidator:
    def problem(url: str) -> str | None:
        try:
            parts = urlsplit(url.strip())
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:  # a port that is not a number
            return f"must be an http:// or https:// URL, e.g. {example}"
        if not valid:
            return f"must be an http:// or https:// URL, e.g. {example}"
        if parts.username or parts.password:
            return "must not carry credentials: they are settings of their own"
        return None

    return check(problem)


def host_problem(host: str) -> str | None:
    if host.strip() and not any(c.isspace() or c in "/@" for c in host):
        return None
    return "must be a host name or address alone, e.g. sftp.example.com (no scheme, user or path)"


def database_url_problem(url: str) -> str | None:
    expected = "must be postgresql://user:password@host:port/database"
    try:
        port = conninfo_to_dict(libpq_url(url)).get("port") or "5432"
    except (psycopg.Error, ValueError):
        return expected
    if not url.startswith(("postgresql", "postgres")) or "://" not in url:
        return expected
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in str(port).split(",")):
        return f"{expected}, its port a number from 1 to 65535"
    return None


def database_server(url: str) -> str:
    """How messages name the database: never with its password."""
    info = conninfo_to_dict(libpq_url(url))
    host, port = info.get("host", "localhost"), info.get("port", "5432")
    return f"postgresql://{info.get('user', '')}@{host}:{port}/{info.get('dbname', '')}"


def parses(parse: Callable[[str], object]) -> WrapValidator:
    """A check that a text setting parses; parse's ValueError says what is wrong."""

    def problem(text: str) -> str | None:
        try:
            parse(text)
        except ValueError as exc:
            return str(exc)
        return None

    return check(problem)
