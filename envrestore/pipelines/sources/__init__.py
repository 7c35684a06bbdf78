"""Where a job's parts come from: backups, URLs, uploads."""
