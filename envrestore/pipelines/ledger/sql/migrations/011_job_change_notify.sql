-- A job changed as a follower sees it (`--wait`, cli/follow.py, draws the job
-- view): NOTIFY envrestore_job with its id, so the follower redraws at once
-- instead of polling. Only what the view shows: the job's status and outcome, a
-- step's status, progress (bytes), attempts and outcome, a new event. Not the
-- bookkeeping that changes most often: a heartbeat that moved no bytes
-- (`heartbeat_at`, every few seconds per running step), the relay's
-- `enqueued_at`, a lease's token. Each NOTIFY takes a cluster-wide lock at
-- commit, so the quiet updates must not send one. Row triggers with WHEN: a
-- quiet update queues nothing; PostgreSQL folds equal notifications of a
-- transaction into one, delivered at commit. The queued event of a new job
-- wakes nobody (no one follows it before it exists).
CREATE FUNCTION envrestore_notify_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('envrestore_job', NEW.id::text);
    RETURN NULL;
END $$;

CREATE FUNCTION envrestore_notify_job_of_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('envrestore_job', NEW.job_id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify_change AFTER UPDATE ON jobs
    FOR EACH ROW
    WHEN ((OLD.status, OLD.error, OLD.error_step, OLD.started_at, OLD.finished_at, OLD.outputs)
          IS DISTINCT FROM
          (NEW.status, NEW.error, NEW.error_step, NEW.started_at, NEW.finished_at, NEW.outputs))
    EXECUTE FUNCTION envrestore_notify_job();
CREATE TRIGGER job_steps_notify_change AFTER UPDATE ON job_steps
    FOR EACH ROW
    WHEN ((OLD.status, OLD.attempts, OLD.bytes_done, OLD.bytes_total, OLD.started_at,
           OLD.finished_at, OLD.error, OLD.outputs)
          IS DISTINCT FROM
          (NEW.status, NEW.attempts, NEW.bytes_done, NEW.bytes_total, NEW.started_at,
           NEW.finished_at, NEW.error, NEW.outputs))
    EXECUTE FUNCTION envrestore_notify_job_of_row();
CREATE TRIGGER job_events_notify_change AFTER INSERT ON job_events
    FOR EACH ROW WHEN (NEW.event <> 'job.queued')
    EXECUTE FUNCTION envrestore_notify_job_of_row();
