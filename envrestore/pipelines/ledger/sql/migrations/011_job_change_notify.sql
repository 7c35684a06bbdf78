-- A job changed (its row, one of its steps, a new event): NOTIFY envrestore_job
-- with its id, so a follower (`--wait`, cli/follow.py) redraws at once instead of
-- polling. Statement triggers: one notification per job and statement, and
-- PostgreSQL folds equal ones of a transaction into one, delivered at commit.
-- The queued event of a new job wakes nobody (no one follows it before it exists).
CREATE FUNCTION envrestore_notify_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('envrestore_job', c.id::text) FROM (SELECT DISTINCT id FROM changed) AS c;
    RETURN NULL;
END $$;

CREATE FUNCTION envrestore_notify_job_of_step() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('envrestore_job', c.job_id::text)
    FROM (SELECT DISTINCT job_id FROM changed) AS c;
    RETURN NULL;
END $$;

CREATE FUNCTION envrestore_notify_job_of_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('envrestore_job', c.job_id::text)
    FROM (SELECT DISTINCT job_id FROM changed WHERE event <> 'job.queued') AS c;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify_change AFTER UPDATE ON jobs
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION envrestore_notify_job();
CREATE TRIGGER job_steps_notify_change AFTER UPDATE ON job_steps
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION envrestore_notify_job_of_step();
CREATE TRIGGER job_events_notify_change AFTER INSERT ON job_events
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION envrestore_notify_job_of_event();
