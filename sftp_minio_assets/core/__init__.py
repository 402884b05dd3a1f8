"""The values every layer shares: no Dagster, no database, no server."""
