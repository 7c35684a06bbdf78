"""Scheduled backups: slots (clock math), the ledger's records, the leader lease, the loop."""
