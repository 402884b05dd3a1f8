import os

import dagster as dg

# Dagster makes a `default_automation_condition_sensor` for assets with an automation condition,
# but leaves it stopped until someone turns it on in the UI: this one runs as soon as the code
# loads. The daemon evaluates it (its AssetDaemon, on by default) every
# AUTOMATION_INTERVAL_SECONDS (default 30, Dagster's).
automation = dg.AutomationConditionSensorDefinition(
    "automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(os.environ.get("AUTOMATION_INTERVAL_SECONDS") or 30),
    # Runs, not a backfill, when a tick requests several files: each file is a run of its own
    # either way, and a backfill's runs wait for the backfill daemon's next pass (every 30 s).
    emit_backfills=False,
    description="Loads each file's orders once it lands, and again when a new version lands.",
)
