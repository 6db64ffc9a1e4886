"""What a person reads after a run: ``report.md`` and plots from a run folder's records."""
