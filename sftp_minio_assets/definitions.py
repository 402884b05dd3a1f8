"""The standalone code location (workspace.yaml): the sources of SOURCES_FILE, or the one of the
SFTP_* variables, as SftpSource components, and the TransferMonitor; the same components a `dg`
project declares in its defs.yaml files."""

import os
from pathlib import Path

import dagster as dg

from .defs.component import SftpSource, TransferMonitor, shared_resources
from .defs.environment import source_from_env
from .defs.sources import load_sources


def standalone_sources() -> list[SftpSource]:
    """SOURCES_FILE's sources, checked together, or else the single source of the SFTP_*
    variables (named `default`)."""
    path = os.environ.get("SOURCES_FILE")
    if path:
        resources = list(load_sources(Path(path), shared_resources()).values())
    else:
        resources = [source_from_env(shared_resources())]
    return [SftpSource.of_resource(resource) for resource in resources]


sources = {source.name: source for source in standalone_sources()}

defs = dg.Definitions.merge(
    *(source.definitions() for source in sources.values()),
    TransferMonitor().build_defs(),
    # A run is one step that copies its files on threads: run it in the run worker's process,
    # not in a second process that would load the code again.
    dg.Definitions(executor=dg.in_process_executor),
)
