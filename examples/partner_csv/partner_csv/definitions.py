from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        # The runs the sensors launch are one step each (a batch of files copied on threads,
        # one file's orders loaded): run them in the run worker's process, as the main
        # project's code location does. Dagster's default executor would start a second
        # process per step that loads Dagster, pandas and this code again, for an isolation a
        # single step does not need.
        dg.Definitions(executor=dg.in_process_executor),
    )
