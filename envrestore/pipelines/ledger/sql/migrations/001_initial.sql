-- The ledger: PostgreSQL is the source of truth for sites, backups and jobs.
-- Redis/Dramatiq only delivers messages; everything here survives its loss.

CREATE TABLE sites (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE environments (
    id          bigserial PRIMARY KEY,
    site_id     bigint NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    engine      text NOT NULL CHECK (engine IN ('mariadb', 'postgresql')),
    db_dsn      text NOT NULL,
    files_dir   text NOT NULL,
    code_dir    text NOT NULL,
    protected   boolean NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site_id, name)
);

CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL,
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    environment_id  bigint REFERENCES environments (id) ON DELETE SET NULL,
    site            text,
    env             text,
    params          jsonb NOT NULL DEFAULT '{}',
    outputs         jsonb NOT NULL DEFAULT '{}',
    error           text,
    error_step      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE INDEX jobs_created_idx ON jobs (created_at DESC);
CREATE INDEX jobs_active_idx ON jobs (status) WHERE status IN ('queued', 'running');

-- One row per step of a job's plan. `attempts` is counted here, not by
-- Dramatiq: a SIGKILLed worker's message comes back without a retry count.
CREATE TABLE job_steps (
    job_id        uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name          text NOT NULL,
    position      int NOT NULL,
    depends_on    text[] NOT NULL DEFAULT '{}',
    on_failure    boolean NOT NULL DEFAULT false,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'running', 'done', 'failed', 'skipped')),
    attempts      int NOT NULL DEFAULT 0,
    max_attempts  int NOT NULL,
    not_before    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz,
    claimed_by    text,
    started_at    timestamptz,
    finished_at   timestamptz,
    bytes_done    bigint NOT NULL DEFAULT 0,
    bytes_total   bigint,
    outputs       jsonb NOT NULL DEFAULT '{}',
    error         text,
    enqueued_at   timestamptz,
    PRIMARY KEY (job_id, name)
);
CREATE INDEX job_steps_live_idx ON job_steps (status) WHERE status IN ('pending', 'running');

CREATE TABLE idempotency_keys (
    scope        text NOT NULL,
    key          text NOT NULL,
    fingerprint  text NOT NULL,
    job_id       uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- A job holds its environment's lease from its first step to its end. The
-- fencing token only grows: a step checks it before touching the environment.
CREATE TABLE env_leases (
    environment_id  bigint PRIMARY KEY REFERENCES environments (id) ON DELETE CASCADE,
    job_id          uuid REFERENCES jobs (id) ON DELETE SET NULL,
    fencing_token   bigint NOT NULL DEFAULT 0,
    acquired_at     timestamptz
);

CREATE TABLE backups (
    id              text PRIMARY KEY,
    environment_id  bigint NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    site            text NOT NULL,
    env             text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('manual', 'automatic')),
    engine          text NOT NULL,
    git_head        text,
    manifest_key    text NOT NULL,
    job_id          uuid REFERENCES jobs (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz
);
CREATE INDEX backups_env_idx ON backups (environment_id, created_at DESC);

CREATE TABLE backup_parts (
    backup_id  text NOT NULL REFERENCES backups (id) ON DELETE CASCADE,
    part       text NOT NULL CHECK (part IN ('code', 'database', 'files')),
    key        text NOT NULL,
    size       bigint NOT NULL,
    sha256     text NOT NULL,
    PRIMARY KEY (backup_id, part)
);

-- Messages to send, written in the transaction that made them due. A relay
-- sends them to the broker and deletes them; sending twice is harmless.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    job_id        uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step          text NOT NULL,
    available_at  timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_available_idx ON outbox (available_at);

CREATE TABLE job_events (
    id       bigserial PRIMARY KEY,
    job_id   uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at       timestamptz NOT NULL DEFAULT now(),
    step     text,
    event    text NOT NULL,
    data     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX job_events_job_idx ON job_events (job_id, id);

ALTER TABLE jobs ADD COLUMN lease_token bigint;
CREATE UNIQUE INDEX outbox_job_step_idx ON outbox (job_id, step);
