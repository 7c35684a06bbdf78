-- A backup being deleted is marked first, under its row lock, so no new job
-- may start reading it; its objects go next and its rows last (pipelines/backup/delete.py).
ALTER TABLE backups ADD COLUMN status text NOT NULL DEFAULT 'ready'
    CHECK (status IN ('ready', 'deleting'));
ALTER TABLE backups ADD COLUMN deleting_job_id uuid REFERENCES jobs (id) ON DELETE SET NULL;
CREATE INDEX backups_expires_idx ON backups (expires_at) WHERE status = 'ready';
