"""The transfer log's tables in PostgreSQL: every SQL statement of the project."""
