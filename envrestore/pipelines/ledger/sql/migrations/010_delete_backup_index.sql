-- The delete jobs of a backup, found by its id: expiry looks up each due
-- backup's newest delete (backups_due_for_expiry), a new delete its active one.
CREATE INDEX jobs_delete_backup_idx ON jobs ((params ->> 'backup_id'), created_at DESC)
    WHERE kind = 'delete_backup';
