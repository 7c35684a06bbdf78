-- Named SQL blocks, loaded once by pipelines.ledger.queries. One block, one statement.

-- name: insert_site
INSERT INTO sites (name) VALUES ($1)
ON CONFLICT (name) DO NOTHING
RETURNING id, name, created_at;

-- name: get_site
SELECT id, name, created_at FROM sites WHERE name = $1;

-- name: upsert_environment
INSERT INTO environments (site_id, name, engine, db_dsn, files_dir, code_dir, protected, url)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (site_id, name) DO UPDATE
SET engine = EXCLUDED.engine, db_dsn = EXCLUDED.db_dsn, files_dir = EXCLUDED.files_dir,
    code_dir = EXCLUDED.code_dir, protected = EXCLUDED.protected,
    url = COALESCE(EXCLUDED.url, environments.url), updated_at = now()
RETURNING id, (xmax = 0) AS created;

-- name: ensure_lease_row
INSERT INTO env_leases (environment_id) VALUES ($1) ON CONFLICT DO NOTHING;

-- name: get_environment
SELECT e.id, s.name AS site, e.name AS env, e.engine, e.db_dsn, e.files_dir, e.code_dir,
       e.protected, e.created_at, e.url
FROM environments e JOIN sites s ON s.id = e.site_id
WHERE s.name = $1 AND e.name = $2;

-- name: get_environment_by_id
SELECT e.id, s.name AS site, e.name AS env, e.engine, e.db_dsn, e.files_dir, e.code_dir,
       e.protected, e.created_at, e.url
FROM environments e JOIN sites s ON s.id = e.site_id
WHERE e.id = $1;

-- name: list_environments
SELECT e.id, s.name AS site, e.name AS env, e.engine, e.db_dsn, e.files_dir, e.code_dir,
       e.protected, e.created_at, e.url
FROM environments e JOIN sites s ON s.id = e.site_id
WHERE ($1::text IS NULL OR s.name = $1)
ORDER BY s.name, CASE e.name WHEN 'dev' THEN 0 WHEN 'test' THEN 1 WHEN 'live' THEN 2 ELSE 3 END, e.name;

-- name: claim_idempotency_key
INSERT INTO idempotency_keys (scope, key, fingerprint, job_id)
VALUES ($1, $2, $3, $4)
ON CONFLICT (scope, key) DO NOTHING
RETURNING job_id;

-- name: get_idempotency_key
SELECT fingerprint, job_id FROM idempotency_keys WHERE scope = $1 AND key = $2;

-- name: insert_job
INSERT INTO jobs (id, kind, environment_id, site, env, params, requested_by)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: insert_step
INSERT INTO job_steps (job_id, name, position, depends_on, on_failure, max_attempts)
VALUES ($1, $2, $3, $4, $5, $6);

-- name: insert_outbox
INSERT INTO outbox (job_id, step, available_at)
VALUES ($1, $2, now() + make_interval(secs => $3))
ON CONFLICT (job_id, step) DO UPDATE SET available_at = LEAST(outbox.available_at, EXCLUDED.available_at);

-- name: notify_outbox
SELECT pg_notify('envrestore_outbox', $1::text);

-- name: take_outbox
DELETE FROM outbox
WHERE id IN (
    SELECT id FROM outbox WHERE available_at <= now()
    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
)
RETURNING job_id, step;

-- name: mark_enqueued
UPDATE job_steps SET enqueued_at = now() WHERE job_id = $1 AND name = $2;

-- name: mark_unsent
-- A message that arrived before its step was ready: the step counts as never sent again.
UPDATE job_steps SET enqueued_at = NULL WHERE job_id = $1 AND name = $2 AND status = 'pending';

-- name: get_job
SELECT id, kind, status, environment_id, site, env, params, outputs, error, error_step,
       created_at, started_at, finished_at, lease_token, requested_by
FROM jobs WHERE id = $1;

-- name: get_job_for_update
SELECT id, kind, status, environment_id, site, env, params, outputs, error, error_step,
       created_at, started_at, finished_at, lease_token, requested_by
FROM jobs WHERE id = $1 FOR NO KEY UPDATE;

-- name: lock_job
-- Taken first by every transaction that changes a job's steps: one order of
-- locks (job, then steps), and NO KEY UPDATE so the foreign-key share locks of
-- event and outbox inserts never deadlock against it.
SELECT id FROM jobs WHERE id = $1 FOR NO KEY UPDATE;

-- name: list_jobs
SELECT id, kind, status, environment_id, site, env, params, outputs, error, error_step,
       created_at, started_at, finished_at, lease_token, requested_by
FROM jobs
WHERE ($1::text IS NULL OR site = $1) AND ($2::text IS NULL OR env = $2)
ORDER BY created_at DESC LIMIT $3;

-- name: get_steps
SELECT job_id, name, position, depends_on, on_failure, status, attempts, max_attempts, not_before,
       heartbeat_at, claimed_by, started_at, finished_at, bytes_done, bytes_total, outputs, error,
       enqueued_at
FROM job_steps WHERE job_id = $1 ORDER BY position;

-- name: get_step
SELECT job_id, name, position, depends_on, on_failure, status, attempts, max_attempts, not_before,
       heartbeat_at, claimed_by, started_at, finished_at, bytes_done, bytes_total, outputs, error,
       enqueued_at
FROM job_steps WHERE job_id = $1 AND name = $2;

-- name: claim_step
-- Pending and due, or running with an expired heartbeat (its worker died).
UPDATE job_steps
SET status = 'running', attempts = attempts + 1, heartbeat_at = now(), claimed_by = $3,
    started_at = COALESCE(started_at, now()), error = NULL
WHERE job_id = $1 AND name = $2
  AND ((status = 'pending' AND not_before <= now())
       OR (status = 'running' AND heartbeat_at < now() - make_interval(secs => $4)))
RETURNING attempts, max_attempts;

-- name: heartbeat_step
UPDATE job_steps s
SET heartbeat_at = now(), bytes_done = $4, bytes_total = $5
FROM jobs j
WHERE s.job_id = $1 AND s.name = $2 AND s.status = 'running' AND s.attempts = $3
  AND j.id = s.job_id
RETURNING j.status AS job_status;

-- name: finish_step_done
-- The final counters: a step quicker than one heartbeat never flushed them.
UPDATE job_steps
SET status = 'done', finished_at = now(), outputs = $4, heartbeat_at = NULL,
    bytes_done = GREATEST(bytes_done, $5), bytes_total = COALESCE($6, bytes_total, $5)
WHERE job_id = $1 AND name = $2 AND status = 'running' AND attempts = $3
RETURNING name;

-- name: finish_step_failed
UPDATE job_steps
SET status = 'failed', finished_at = now(), error = $4, heartbeat_at = NULL
WHERE job_id = $1 AND name = $2 AND status = 'running' AND attempts = $3
RETURNING name;

-- name: retry_step_later
UPDATE job_steps
SET status = 'pending', error = $4, heartbeat_at = NULL, claimed_by = NULL,
    not_before = now() + make_interval(secs => $5)
WHERE job_id = $1 AND name = $2 AND status = 'running' AND attempts = $3
RETURNING name;

-- name: release_step
-- A worker shutting down hands its attempt back: pending and due now (the attempt still counts).
UPDATE job_steps
SET status = 'pending', heartbeat_at = NULL, claimed_by = NULL, not_before = now()
WHERE job_id = $1 AND name = $2 AND status = 'running' AND attempts = $3
RETURNING name;

-- name: skip_step
UPDATE job_steps SET status = 'skipped', finished_at = now(), heartbeat_at = NULL
WHERE job_id = $1 AND name = $2 AND status IN ('pending', 'running');

-- name: set_job_running
UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, now())
WHERE id = $1 AND status = 'queued';

-- name: set_job_lease_token
UPDATE jobs SET lease_token = $2 WHERE id = $1;

-- name: finish_job
UPDATE jobs SET status = $2, error = $3, error_step = $4, finished_at = now()
WHERE id = $1 AND status IN ('queued', 'running')
RETURNING id;

-- name: merge_job_outputs
UPDATE jobs SET outputs = outputs || $2 WHERE id = $1;

-- name: acquire_lease
-- First come, first served: only when no older active job of the environment waits.
UPDATE env_leases l
SET job_id = $2, fencing_token = l.fencing_token + 1, acquired_at = now()
WHERE l.environment_id = $1
  AND (l.job_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM jobs h WHERE h.id = l.job_id
          AND (h.status IN ('queued', 'running')
               OR EXISTS (SELECT 1 FROM job_steps hs
                          WHERE hs.job_id = h.id AND hs.status IN ('pending', 'running')))))
  AND NOT EXISTS (
      SELECT 1 FROM jobs o, jobs me
      WHERE me.id = $2 AND o.environment_id = $1 AND o.id <> $2
        AND o.status IN ('queued', 'running') AND o.created_at < me.created_at)
RETURNING fencing_token;

-- name: get_lease
SELECT environment_id, job_id, fencing_token, acquired_at FROM env_leases WHERE environment_id = $1;

-- name: check_lease
SELECT 1 FROM env_leases WHERE environment_id = $1 AND job_id = $2 AND fencing_token = $3;

-- name: release_lease
UPDATE env_leases SET job_id = NULL WHERE environment_id = $1 AND job_id = $2;

-- name: insert_event
INSERT INTO job_events (job_id, step, event, data) VALUES ($1, $2, $3, $4);

-- name: list_events
SELECT id, job_id, at, step, event, data FROM job_events WHERE job_id = $1 ORDER BY id;

-- name: expired_running_steps
SELECT s.job_id, s.name, j.status AS job_status
FROM job_steps s JOIN jobs j ON j.id = s.job_id
WHERE s.status = 'running' AND s.heartbeat_at < now() - make_interval(secs => $1);

-- name: expire_step
UPDATE job_steps SET status = 'pending', heartbeat_at = NULL, claimed_by = NULL
WHERE job_id = $1 AND name = $2 AND status = 'running'
  AND heartbeat_at < now() - make_interval(secs => $3)
RETURNING attempts;

-- name: jobs_needing_attention
-- Jobs not finished, or finished with steps still to settle (cleanup on failure).
SELECT DISTINCT j.id FROM jobs j JOIN job_steps s ON s.job_id = j.id
WHERE s.status IN ('pending', 'running')
ORDER BY j.id LIMIT $1;

-- name: stale_pending_steps
-- Pending, due, dependencies done, no outbox row, and not sent recently: the message may be lost.
SELECT s.job_id, s.name FROM job_steps s JOIN jobs j ON j.id = s.job_id
WHERE s.status = 'pending' AND s.not_before <= now()
  AND CASE WHEN s.on_failure THEN j.status IN ('failed', 'cancelled')
           ELSE j.status IN ('queued', 'running') END
  AND (s.enqueued_at IS NULL OR s.enqueued_at < now() - make_interval(secs => $1))
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = s.job_id AND o.step = s.name)
  AND NOT EXISTS (SELECT 1 FROM job_steps d WHERE d.job_id = s.job_id
                  AND d.name = ANY (s.depends_on) AND d.status <> 'done')
LIMIT $2;

-- name: insert_backup
INSERT INTO backups (id, environment_id, site, env, kind, engine, git_head, manifest_key, job_id,
                     created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (id) DO NOTHING;

-- name: insert_backup_part
INSERT INTO backup_parts (backup_id, part, key, size, sha256) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (backup_id, part) DO NOTHING;

-- name: list_backups
SELECT b.id, b.site, b.env, b.kind, b.engine, b.git_head, b.manifest_key, b.job_id,
       b.created_at, b.expires_at,
       COALESCE((SELECT jsonb_agg(jsonb_build_object('part', p.part, 'key', p.key, 'size', p.size,
                                                     'sha256', p.sha256) ORDER BY p.part)
                 FROM backup_parts p WHERE p.backup_id = b.id), '[]'::jsonb) AS parts
FROM backups b LEFT JOIN jobs j ON j.id = b.job_id
WHERE b.environment_id = $1
ORDER BY b.created_at DESC, j.created_at DESC NULLS LAST, b.id DESC;

-- name: get_backup
SELECT b.id, b.site, b.env, b.kind, b.engine, b.git_head, b.manifest_key, b.job_id,
       b.created_at, b.expires_at,
       COALESCE((SELECT jsonb_agg(jsonb_build_object('part', p.part, 'key', p.key, 'size', p.size,
                                                     'sha256', p.sha256) ORDER BY p.part)
                 FROM backup_parts p WHERE p.backup_id = b.id), '[]'::jsonb) AS parts
FROM backups b WHERE b.id = $1;

-- name: lock_migrations
SELECT pg_advisory_lock($1);

-- name: unlock_migrations
SELECT pg_advisory_unlock($1);

-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     int PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: applied_migrations
SELECT version FROM schema_migrations;

-- name: record_migration
INSERT INTO schema_migrations (version, name) VALUES ($1, $2);

-- name: try_reconciler_lock
SELECT pg_try_advisory_lock($1) AS locked;

-- name: unlock_reconciler
SELECT pg_advisory_unlock($1);

-- name: latest_backup_id
-- Backup times are whole seconds (Pantheon's names): two made in one second
-- are told apart by when their jobs were queued.
SELECT b.id FROM backups b LEFT JOIN jobs j ON j.id = b.job_id
WHERE b.environment_id = $1
ORDER BY b.created_at DESC, j.created_at DESC NULLS LAST, b.id DESC LIMIT 1;

-- name: insert_rollback_point
INSERT INTO rollback_points (job_id, environment_id, details, expires_at)
VALUES ($1, $2, $3, now() + make_interval(hours => $4))
ON CONFLICT (job_id) DO NOTHING;

-- name: get_rollback_point
SELECT job_id, environment_id, details, created_at, expires_at, status, rollback_job_id
FROM rollback_points WHERE job_id = $1;

-- name: newest_kept_rollback_point
SELECT job_id FROM rollback_points
WHERE environment_id = $1 AND status = 'kept'
ORDER BY created_at DESC LIMIT 1;

-- name: set_rollback_point_status
UPDATE rollback_points SET status = $2, rollback_job_id = COALESCE($3, rollback_job_id)
WHERE job_id = $1;

-- name: due_rollback_points
SELECT job_id FROM rollback_points
WHERE status = 'kept' AND expires_at <= now()
ORDER BY expires_at LIMIT $1;

-- name: later_restore_switched
-- A restore of the same environment that switched after the given one.
SELECT r.job_id FROM rollback_points r, rollback_points me
WHERE me.job_id = $1 AND r.environment_id = me.environment_id
  AND r.created_at > me.created_at AND r.status = 'kept'
LIMIT 1;

-- name: insert_link
INSERT INTO links (id, backup_id, part, key, signature, expires_at, requested_by)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: get_link_by_signature
SELECT id, backup_id, part, key, expires_at, requested_by, created_at
FROM links WHERE signature = $1;

-- name: environment_id_of
SELECT e.id FROM environments e JOIN sites s ON s.id = e.site_id
WHERE s.name = $1 AND e.name = $2;

-- name: upload_in_use
-- Another unfinished job still has to read the same uploaded object (one of
-- its reading steps is not done yet; two jobs ending together both release).
SELECT EXISTS (
    SELECT 1 FROM jobs j
    WHERE j.id <> $1 AND j.status IN ('queued', 'running') AND j.kind = 'import'
      AND j.params -> 'parts' @> jsonb_build_array(jsonb_build_object('upload_key', $2::text))
      AND EXISTS (
          SELECT 1 FROM job_steps s
          WHERE s.job_id = j.id AND s.status IN ('pending', 'running')
            AND s.name IN ('resolve', 'fetch', 'verify', 'import_db', 'import_files', 'apply_code')
      )
);
