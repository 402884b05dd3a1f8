"""One file: stat, claim, copy, complete, report, after-copy; and what failures mean."""
