"""The code location's table of contents: per source, its asset, sensor, checks and dry run;
then the statistics and the alerts, shared by all sources."""

import dagster as dg

from .defs.alerts import alert_on_recovery, alert_on_repeated_failures
from .defs.assets import build_files_asset
from .defs.checks import build_file_checks
from .defs.dry_run import build_dry_run_job
from .defs.environment import shared_resources_from_env
from .defs.sensors import build_new_files_sensor
from .defs.sources import source_key, sources_from_env
from .defs.stats import build_health_job, build_health_schedule, transfer_stats

shared = shared_resources_from_env()
sources = sources_from_env(shared)
files_assets = {name: build_files_asset(name) for name in sources}
health = build_health_job(list(files_assets.values()))

defs = dg.Definitions(
    assets=[*files_assets.values(), transfer_stats],
    asset_checks=[
        check for name, asset in files_assets.items() for check in build_file_checks(asset, name)
    ],
    jobs=[health, *(build_dry_run_job(name) for name in sources)],
    schedules=[build_health_schedule(health)],
    sensors=[
        *(build_new_files_sensor(name, asset) for name, asset in files_assets.items()),
        alert_on_repeated_failures,
        alert_on_recovery,
    ],
    resources={**shared, **{source_key(name): source for name, source in sources.items()}},
    # A run is one step that copies its files on threads: run it in the run worker's process,
    # not in a second process that would load the code again.
    executor=dg.in_process_executor,
)
