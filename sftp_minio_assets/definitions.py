"""The code location's table of contents."""

import dagster as dg

from .assets import DEFAULT_SOURCE, files
from .resources import resources_from_env
from .sensors import build_new_files_sensor

defs = dg.Definitions(
    assets=[files],
    sensors=[build_new_files_sensor(DEFAULT_SOURCE, files)],
    resources=resources_from_env(),
)
