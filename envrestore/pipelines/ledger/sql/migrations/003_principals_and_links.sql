-- Who asked for each job (an operator, a token, the scheduler), for audit.
ALTER TABLE jobs ADD COLUMN requested_by text;

-- Temporary links (presigned GETs) handed out for backup parts: what, until
-- when, for whom. An imported URL of our own store must match one of these
-- (by its signature), so a tampered or expired link is refused before a byte
-- is read.
CREATE TABLE links (
    id            uuid PRIMARY KEY,
    backup_id     text NOT NULL REFERENCES backups (id) ON DELETE CASCADE,
    part          text NOT NULL CHECK (part IN ('code', 'database', 'files')),
    key           text NOT NULL,
    signature     text NOT NULL UNIQUE,
    expires_at    timestamptz NOT NULL,
    requested_by  text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX links_backup_idx ON links (backup_id, created_at DESC);
