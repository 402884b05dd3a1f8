"""Pure decisions: what to copy (planning, readiness), where (destinations), when (windows)."""
