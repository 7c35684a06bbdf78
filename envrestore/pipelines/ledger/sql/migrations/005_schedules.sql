-- Scheduled backups (issue 9). Every environment is backed up daily unless its
-- schedule is turned off: no row here means "on, at the default hour and
-- weekly day" (settings), so a new environment is covered without a step.
CREATE TABLE schedules (
    environment_id  bigint PRIMARY KEY REFERENCES environments (id) ON DELETE CASCADE,
    enabled         boolean NOT NULL DEFAULT true,
    -- NULL: the setting's default (ENVRESTORE_SCHEDULE_DEFAULT_HOUR / _WEEKLY_DAY).
    hour            smallint CHECK (hour BETWEEN 0 AND 23),
    -- 0 = Sunday … 6 = Saturday (cron's and PostgreSQL's dow).
    weekly_day      smallint CHECK (weekly_day BETWEEN 0 AND 6),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    updated_by      text
);

-- One scheduler leads at a time: the holder of this single row until expires_at.
-- A leader renews it every tick; a dead one stops renewing and another takes it.
CREATE TABLE scheduler_lease (
    id          smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    holder      text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

-- A slot taken: the insert is the claim, so two schedulers (a leader whose lease
-- ran out mid-tick and its successor) can never both take the same slot. The
-- backup is submitted with the idempotency key schedule:<site>.<env>:<slot> as a
-- second guard.
CREATE TABLE schedule_slots (
    environment_id  bigint NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    slot            timestamptz NOT NULL,
    weekly          boolean NOT NULL,
    keep_days       integer NOT NULL,
    taken_by        text NOT NULL,
    taken_at        timestamptz NOT NULL DEFAULT now(),
    job_id          uuid REFERENCES jobs (id) ON DELETE SET NULL,
    error           text,
    UNIQUE (environment_id, slot)
);
CREATE INDEX schedule_slots_latest_idx ON schedule_slots (environment_id, slot DESC);
