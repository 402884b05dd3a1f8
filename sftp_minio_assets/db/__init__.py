"""The transfer log's tables in PostgreSQL: every SQL statement of the project, in the module of
its concern (transfer_log.TransferLog composes them)."""
