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

-- name: get_idempotency_key
SELECT fingerprint, job_id FROM idempotency_keys WHERE scope = $1 AND key = $2;

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
  -- $4: only these sites (an API token's); a job without a site (delete_backup)
  -- counts as its target's site
  AND ($4::text[] IS NULL
       OR COALESCE(site, split_part(params->>'target', '.', 1)) = ANY($4::text[]))
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

-- name: lock_lease
-- The environment's lease row, locked for the transaction in which a step decides
-- to wait: a release (`release_lease`, then `wake_lease_waiters`) is ordered before
-- or after it, so the waiting step either takes the lease or is woken.
SELECT job_id, fencing_token FROM env_leases WHERE environment_id = $1 FOR UPDATE;

-- name: wake_lease_waiters
-- The environment's lease may have come free (job $2 ended): the deferred messages
-- of its other active jobs that never held it (steps waiting for the lease, due
-- and not backing off) are due now.
UPDATE outbox o SET available_at = now()
FROM jobs j, job_steps s
WHERE j.environment_id = $1 AND j.id <> $2 AND j.status IN ('queued', 'running')
  AND j.lease_token IS NULL
  AND o.job_id = j.id AND o.available_at > now()
  AND s.job_id = o.job_id AND s.name = o.step AND s.status = 'pending' AND s.not_before <= now()
RETURNING o.job_id, o.step;

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
       b.created_at, b.expires_at, b.status, b.deleting_job_id,
       COALESCE((SELECT jsonb_agg(jsonb_build_object('part', p.part, 'key', p.key, 'size', p.size,
                                                     'sha256', p.sha256) ORDER BY p.part)
                 FROM backup_parts p WHERE p.backup_id = b.id), '[]'::jsonb) AS parts
FROM backups b LEFT JOIN jobs j ON j.id = b.job_id
WHERE b.environment_id = $1
ORDER BY b.created_at DESC, j.created_at DESC NULLS LAST, b.id DESC;

-- name: get_backup
SELECT b.id, b.site, b.env, b.kind, b.engine, b.git_head, b.manifest_key, b.job_id,
       b.created_at, b.expires_at, b.status, b.deleting_job_id,
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
WHERE b.environment_id = $1 AND b.status = 'ready'
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
VALUES ($1, $2, $3, $4, $5, $6, $7)
-- The same part presigned twice in one second is the same URL: one link.
ON CONFLICT (signature) DO NOTHING;

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

-- ------------------------------------------------------------ schedules (005)

-- name: schedule_targets
-- Every environment (of a site, or one), its schedule row if any (NULLs: the
-- defaults) and the latest slot taken.
SELECT e.id, s.name AS site, e.name AS env, e.created_at,
       sc.enabled, sc.hour, sc.weekly_day,
       last.slot AS last_slot, last.weekly AS last_weekly, last.job_id AS last_job_id,
       last.error AS last_error, last.taken_at AS last_taken_at
FROM environments e JOIN sites s ON s.id = e.site_id
LEFT JOIN schedules sc ON sc.environment_id = e.id
LEFT JOIN LATERAL (
    SELECT slot, weekly, job_id, error, taken_at FROM schedule_slots
    WHERE environment_id = e.id ORDER BY slot DESC LIMIT 1
) last ON true
WHERE ($1::text IS NULL OR s.name = $1) AND ($2::text IS NULL OR e.name = $2)
ORDER BY s.name, CASE e.name WHEN 'dev' THEN 0 WHEN 'test' THEN 1 WHEN 'live' THEN 2 ELSE 3 END, e.name;

-- name: schedule_set
-- NULL arguments keep what is stored (a new row: the defaults).
INSERT INTO schedules (environment_id, enabled, hour, weekly_day, updated_by)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (environment_id) DO UPDATE
SET enabled = EXCLUDED.enabled,
    hour = COALESCE(EXCLUDED.hour, schedules.hour),
    weekly_day = COALESCE(EXCLUDED.weekly_day, schedules.weekly_day),
    updated_at = now(), updated_by = EXCLUDED.updated_by;

-- name: scheduler_take_lease
-- Take the leader lease, or renew it: only when free, expired, or already ours.
INSERT INTO scheduler_lease (id, holder, acquired_at, expires_at)
VALUES (1, $1, now(), now() + make_interval(secs => $2))
ON CONFLICT (id) DO UPDATE
SET holder = EXCLUDED.holder,
    acquired_at = CASE WHEN scheduler_lease.holder = EXCLUDED.holder
                       THEN scheduler_lease.acquired_at ELSE now() END,
    expires_at = EXCLUDED.expires_at
WHERE scheduler_lease.holder = EXCLUDED.holder OR scheduler_lease.expires_at <= now()
RETURNING holder, acquired_at, expires_at;

-- name: scheduler_release_lease
DELETE FROM scheduler_lease WHERE holder = $1;

-- name: scheduler_lease
SELECT holder, acquired_at, expires_at, expires_at > now() AS live FROM scheduler_lease;

-- name: claim_schedule_slot
-- The claim: inserted only by the live lease holder, only if no slot at or
-- after this one was taken for the environment, and only once (UNIQUE).
INSERT INTO schedule_slots (environment_id, slot, weekly, keep_days, taken_by)
SELECT $1, $2, $3, $4, $5
WHERE EXISTS (SELECT 1 FROM scheduler_lease WHERE holder = $5 AND expires_at > now())
  AND NOT EXISTS (SELECT 1 FROM schedule_slots WHERE environment_id = $1 AND slot >= $2)
ON CONFLICT (environment_id, slot) DO NOTHING
RETURNING slot;

-- name: schedule_slot_submitted
UPDATE schedule_slots SET job_id = $3, error = NULL WHERE environment_id = $1 AND slot = $2;

-- name: schedule_slot_failed
UPDATE schedule_slots SET error = $3 WHERE environment_id = $1 AND slot = $2;

-- name: schedule_slots_of
SELECT environment_id, slot, weekly, keep_days, taken_by, taken_at, job_id, error
FROM schedule_slots WHERE environment_id = $1 ORDER BY slot;

-- Backup deletion (pipelines/backup/delete.py, lifecycle.py).

-- name: backups_due_for_expiry
-- Ready backups past their time, and those a delete job left 'deleting' when it
-- failed or was cancelled midway (their objects may be partly gone: finish them).
-- A backup with an unfinished delete job is left out (nothing new to queue), and
-- last_delete_id names its newest ended delete (keys the next one). Keyset paging
-- after ($3, $4) lets a caller walk every due row, never stuck behind one page.
SELECT b.id, b.site || '.' || b.env AS target, b.status, b.deleting_job_id, b.expires_at,
       d.id AS last_delete_id
FROM backups b
LEFT JOIN LATERAL (
  SELECT id, status FROM jobs
  WHERE kind = 'delete_backup' AND params ->> 'backup_id' = b.id
  ORDER BY created_at DESC LIMIT 1
) d ON true
WHERE b.expires_at IS NOT NULL AND b.expires_at <= $1
  AND b.status IN ('ready', 'deleting')
  AND (d.id IS NULL OR d.status NOT IN ('queued', 'running'))
  AND ($3::timestamptz IS NULL OR (b.expires_at, b.id) > ($3, $4::text))
ORDER BY b.expires_at, b.id LIMIT $2;

-- name: lock_backup
SELECT id, status, deleting_job_id, manifest_key FROM backups WHERE id = $1 FOR UPDATE;

-- name: mark_backup_deleting
UPDATE backups SET status = 'deleting', deleting_job_id = $2 WHERE id = $1;

-- name: backup_readers
-- Unfinished jobs (other than writers and deleters of backups) whose parameters
-- name the backup: a restore pins its id, an import of one of our links carries
-- its key (which holds the id), a clone keeping its snapshot names the id too.
SELECT id, kind, status FROM jobs
WHERE status IN ('queued', 'running') AND id <> $2
  AND kind NOT IN ('backup', 'delete_backup')
  AND strpos(params::text, $1) > 0
ORDER BY created_at;

-- name: delete_backup_rows
DELETE FROM backups WHERE id = $1;

-- name: unmark_backup_deleting
UPDATE backups SET status = 'ready', deleting_job_id = NULL
WHERE id = $1 AND deleting_job_id = $2;

-- name: job_is_active
SELECT status IN ('queued', 'running') FROM jobs WHERE id = $1;

-- name: active_delete_of
-- An unfinished delete of the backup, marked or still queued.
SELECT id FROM jobs
WHERE kind = 'delete_backup' AND status IN ('queued', 'running') AND params ->> 'backup_id' = $1
ORDER BY created_at LIMIT 1;

-- name: backup_ids_in
SELECT id FROM backups WHERE id = ANY($1::text[]);

-- name: active_job_params_naming
-- Unfinished jobs whose parameters name any of the given ids (a backup being
-- written has its objects in S3 before its row exists).
SELECT DISTINCT i AS backup_id FROM jobs j, unnest($1::text[]) AS i
WHERE j.status IN ('queued', 'running') AND strpos(j.params::text, i) > 0;

-- ---------------------------------------------------------------- rollback points (list, sizes, cap)

-- name: list_rollback_points
-- Kept points, newest first, of one site ($1) or environment ($1, $2), or all.
SELECT r.job_id, r.environment_id, s.name AS site, e.name AS env, r.details, r.created_at,
       r.expires_at, r.status, r.disk_bytes, r.db_bytes, r.measured_at
FROM rollback_points r
JOIN environments e ON e.id = r.environment_id
JOIN sites s ON s.id = e.site_id
WHERE r.status = 'kept'
  AND ($1::text IS NULL OR s.name = $1)
  AND ($2::text IS NULL OR e.name = $2)
ORDER BY s.name, e.name, r.created_at DESC;

-- name: set_rollback_point_sizes
UPDATE rollback_points SET disk_bytes = $2, db_bytes = $3, measured_at = now()
WHERE job_id = $1;

-- name: kept_rollback_points_of
-- An environment's kept points, newest first, with their recorded sizes.
SELECT job_id, created_at, disk_bytes, db_bytes FROM rollback_points
WHERE environment_id = $1 AND status = 'kept'
ORDER BY created_at DESC, job_id DESC;

-- name: environment_busy
-- The job that holds the environment's lease (still active), else its oldest
-- queued or running job; none: the environment is idle.
SELECT j.id, j.kind, j.status, (l.job_id IS NOT NULL AND l.job_id = j.id) AS holds_lease
FROM jobs j LEFT JOIN env_leases l ON l.environment_id = j.environment_id
WHERE j.environment_id = $1
  AND (j.status IN ('queued', 'running')
       OR (l.job_id = j.id AND EXISTS (
             SELECT 1 FROM job_steps s
             WHERE s.job_id = j.id AND s.status IN ('pending', 'running'))))
ORDER BY (l.job_id IS NOT NULL AND l.job_id = j.id) DESC, j.created_at
LIMIT 1;

-- ---------------------------------------------------------------- registry changes (issue 9)

-- name: lock_lease_row
-- Held until the registry change commits: no job can take the lease meanwhile.
SELECT job_id FROM env_leases WHERE environment_id = $1 FOR UPDATE;

-- name: lock_site
SELECT id, name FROM sites WHERE name = $1 FOR UPDATE;

-- name: list_sites
SELECT s.name, s.created_at,
       COALESCE(array_agg(e.name ORDER BY e.name) FILTER (WHERE e.id IS NOT NULL), '{}') AS envs
FROM sites s LEFT JOIN environments e ON e.site_id = s.id
GROUP BY s.id ORDER BY s.name;

-- name: count_backups_of_environment
SELECT count(*) FROM backups WHERE environment_id = $1;

-- name: delete_environment
DELETE FROM environments WHERE id = $1;

-- name: delete_site
DELETE FROM sites WHERE id = $1;

-- name: forget_sends_before
-- The broker restarted $1 seconds ago and lost what it held: pending steps sent before
-- that count as never sent, so the reconciler sends them again at its next pass.
UPDATE job_steps SET enqueued_at = NULL
WHERE status = 'pending' AND enqueued_at < now() - make_interval(secs => $1)
RETURNING job_id, name;

-- name: insert_token
-- API tokens (issue 10, pipelines/auth/tokens.py): only the secret's digest is stored.
INSERT INTO tokens (id, name, hash, sites, scopes, expires_at, created_by)
VALUES ($1, $2, $3, $4, $5, CASE WHEN $6::int IS NULL THEN NULL ELSE now() + make_interval(days => $6::int) END, $7)
ON CONFLICT (name) DO NOTHING
RETURNING id, created_at, expires_at;

-- name: get_token_for_auth
SELECT id, name, hash, sites, scopes, expires_at, revoked_at, last_used_at,
       (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())) AS usable,
       (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds') AS touch
FROM tokens WHERE id = $1;

-- name: touch_token
-- At most one write a minute per token: polling clients do not turn reads into writes.
UPDATE tokens SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds');

-- name: list_tokens
SELECT id, name, sites, scopes, created_at, expires_at, revoked_at, last_used_at, created_by
FROM tokens ORDER BY created_at, name;

-- name: revoke_token
-- By id, else by name (exactly one token); revoking twice keeps the first time.
UPDATE tokens SET revoked_at = COALESCE(revoked_at, now())
WHERE id = (SELECT id FROM (
    SELECT id, 0 AS rank FROM tokens WHERE id = $1
    UNION ALL SELECT id, 1 FROM tokens WHERE name = $1
) AS found ORDER BY rank LIMIT 1)
RETURNING id, name, revoked_at, (revoked_at < now()) AS already;

-- name: existing_site_names
SELECT name FROM sites WHERE name = ANY($1::text[]);

-- name: api_job_with_steps
-- The producer API's job view (GET /jobs/{id}): the job and its steps in one
-- primary-key query (a job with no steps yet still gives its one row).
SELECT j.id, j.kind, j.status, j.environment_id, j.site, j.env, j.params, j.outputs, j.error,
       j.error_step, j.created_at, j.started_at, j.finished_at, j.lease_token, j.requested_by,
       s.name AS s_name, s.position AS s_position, s.depends_on AS s_depends_on,
       s.on_failure AS s_on_failure, s.status AS s_status, s.attempts AS s_attempts,
       s.max_attempts AS s_max_attempts, s.heartbeat_at AS s_heartbeat_at,
       s.started_at AS s_started_at, s.finished_at AS s_finished_at,
       s.bytes_done AS s_bytes_done, s.bytes_total AS s_bytes_total, s.outputs AS s_outputs,
       s.error AS s_error, s.enqueued_at AS s_enqueued_at
FROM jobs j LEFT JOIN job_steps s ON s.job_id = j.id
WHERE j.id = $1 ORDER BY s.position;

-- name: api_events_after
-- Events of a job after a given event id (SSE resumption with Last-Event-ID).
SELECT id, at, step, event, data FROM job_events
WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3;

-- name: api_insert_upload
INSERT INTO api_uploads (id, environment_id, element, key, s3_upload_id, size, part_size,
                         requested_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8);

-- name: api_get_upload
SELECT u.id, u.environment_id, u.element, u.key, u.s3_upload_id, u.size, u.part_size,
       u.created_at, u.requested_by, u.job_id, s.name AS site, e.name AS env
FROM api_uploads u JOIN environments e ON e.id = u.environment_id JOIN sites s ON s.id = e.site_id
WHERE u.id = $1;

-- name: api_set_upload_job
UPDATE api_uploads SET job_id = $2 WHERE id = $1;

-- name: metrics_queue
-- Queue gauges at scrape time (observability/ledger_gauges.py): queued jobs and
-- the age of the oldest, read through the partial index jobs_active_idx.
SELECT count(*) AS depth,
       COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 AS oldest_age
FROM jobs WHERE status = 'queued';

-- name: metrics_job_end
-- A job that just ended: its kind, outcome and seconds from submission (ledger clock).
SELECT kind, status, EXTRACT(EPOCH FROM finished_at - created_at)::float8 AS seconds
FROM jobs WHERE id = $1 AND finished_at IS NOT NULL;

-- name: backup_delete_passed_irreversible
-- Whether any delete of the backup ($1) passed its irreversible checkpoint
-- (`enter_irreversible`'s event): from then on its objects may be partly gone.
SELECT EXISTS (
  SELECT 1 FROM job_events e JOIN jobs j ON j.id = e.job_id
  WHERE j.kind = 'delete_backup' AND j.params ->> 'backup_id' = $1
    AND e.event = 'job.irreversible');

-- name: lock_registry
-- `env add`/`env set` one at a time (registry.lock_registry), until commit.
SELECT pg_advisory_xact_lock($1);

-- name: submit_jobs
-- Jobs recorded in one statement, one round trip ($1: a JSON array, one object
-- per job, built by jobs/submit.py): each job's idempotency key claimed, the
-- job, its steps, its first messages in the outbox (the relay sends them, so a
-- committed job always gets them), its queued event, and one NOTIFY to wake the
-- relay. A key already held is looked up first (no lock on the backups then);
-- the backups a reading job names are share-locked, ordered with a delete's
-- `lock_backup`: either the delete sees this job as a reader, or this sees
-- 'deleting'. `created_at` is the clock's, row by row, read in the batch's order
-- (`n`, its ordinal), so the jobs of a batch keep their order whatever the plan
-- (leases are first come, first served).
-- One row per job: created; existing (same key, same request); conflict (same
-- key, another request); deleting (a backup it reads is being deleted); raced (a
-- concurrent insert claimed the key: submit it again to read that job).
WITH req AS MATERIALIZED (
    SELECT * FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (
        id uuid, kind text, environment_id bigint, site text, env text, params jsonb,
        requested_by text, scope text, key text, fingerprint text, steps jsonb,
        ready text[], reads_backups boolean)) WITH ORDINALITY AS r(
        id, kind, environment_id, site, env, params, requested_by, scope, key,
        fingerprint, steps, ready, reads_backups, n)
),
existing AS MATERIALIZED (
    SELECT r.id, k.fingerprint, k.job_id FROM req r
    JOIN idempotency_keys k ON k.scope = r.scope AND k.key = r.key
),
named AS MATERIALIZED (
    SELECT b.id, b.status, b.deleting_job_id, b.site, b.env FROM backups b
    WHERE EXISTS (SELECT 1 FROM req r
                  WHERE r.reads_backups AND strpos(r.params::text, b.id) > 0
                    AND NOT EXISTS (SELECT 1 FROM existing e WHERE e.id = r.id))
    ORDER BY b.id FOR SHARE
),
blocked AS MATERIALIZED (
    SELECT DISTINCT ON (r.id) r.id, n.id AS backup_id, n.deleting_job_id, n.site, n.env
    FROM req r JOIN named n ON r.reads_backups AND strpos(r.params::text, n.id) > 0
    WHERE n.status <> 'ready'
    ORDER BY r.id, n.id
),
fresh AS MATERIALIZED (
    SELECT r.* FROM req r
    WHERE NOT EXISTS (SELECT 1 FROM existing e WHERE e.id = r.id)
      AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.id = r.id)
),
claimed AS (
    INSERT INTO idempotency_keys (scope, key, fingerprint, job_id)
    SELECT scope, key, fingerprint, id FROM fresh WHERE key IS NOT NULL
    ORDER BY scope, key  -- one order for every batch: two never deadlock on their keys
    ON CONFLICT (scope, key) DO NOTHING
    RETURNING job_id
),
created AS (
    INSERT INTO jobs (id, kind, environment_id, site, env, params, requested_by, created_at)
    SELECT id, kind, environment_id, site, env, params, requested_by, clock_timestamp()
    FROM fresh f
    WHERE f.key IS NULL OR f.id IN (SELECT job_id FROM claimed)
    ORDER BY f.n  -- the clock is read after the sort: the batch's order, whatever the plan
    RETURNING id, kind, requested_by, created_at
),
steps AS (
    INSERT INTO job_steps (job_id, name, position, depends_on, on_failure, max_attempts)
    SELECT c.id, s.name, s.position, s.depends_on, s.on_failure, s.max_attempts
    FROM created c JOIN req r ON r.id = c.id,
         jsonb_to_recordset(r.steps) AS s(name text, position int, depends_on text[],
                                          on_failure boolean, max_attempts int)
),
queued AS (
    INSERT INTO outbox (job_id, step)
    SELECT c.id, ready.step FROM created c JOIN req r ON r.id = c.id,
         unnest(r.ready) WITH ORDINALITY AS ready(step, n)
    ORDER BY c.created_at, ready.n
),
events AS (
    INSERT INTO job_events (job_id, at, step, event, data)
    SELECT c.id, c.created_at, NULL, 'job.queued',
           jsonb_build_object('kind', c.kind, 'requested_by', c.requested_by)
    FROM created c
),
woken AS (
    SELECT pg_notify('envrestore_outbox', min(id::text)) FROM created HAVING count(*) > 0
)
SELECT r.id AS request_id,
       CASE WHEN e.id IS NOT NULL THEN
                CASE WHEN e.fingerprint = r.fingerprint THEN 'existing' ELSE 'conflict' END
            WHEN b.id IS NOT NULL THEN 'deleting'
            WHEN c.id IS NOT NULL THEN 'created'
            ELSE 'raced' END AS outcome,
       COALESCE(e.job_id, r.id) AS job_id,
       b.backup_id, b.deleting_job_id, b.site AS backup_site, b.env AS backup_env,
       (SELECT count(*) FROM woken) AS notified
FROM req r
LEFT JOIN existing e ON e.id = r.id
LEFT JOIN blocked b ON b.id = r.id
LEFT JOIN created c ON c.id = r.id
ORDER BY r.n;  -- the first refusal in the order of the requests
