"""The Dagster adapters: the only package that imports dagster."""
