-- What a restore's switch kept of the previous content, and until when.
CREATE TABLE rollback_points (
    job_id          uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    environment_id  bigint NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    details         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    status          text NOT NULL DEFAULT 'kept'
                    CHECK (status IN ('kept', 'rolled_back', 'expired')),
    rollback_job_id uuid REFERENCES jobs (id) ON DELETE SET NULL
);
CREATE INDEX rollback_points_env_idx ON rollback_points (environment_id, created_at DESC);
CREATE INDEX rollback_points_due_idx ON rollback_points (expires_at) WHERE status = 'kept';
