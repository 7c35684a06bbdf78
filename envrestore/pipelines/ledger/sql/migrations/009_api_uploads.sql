-- Uploads made straight to the object store through presigned part URLs (issue 10,
-- HTTP API). The API records which environment and element an upload is for, so
-- only a token that may see that site can complete it, and the complete call
-- knows the key, the S3 multipart upload id and the size it promised. The
-- object itself lives under staging/uploads/, where the orphan sweep aborts an
-- abandoned multipart upload and removes an import upload no unfinished job reads.
CREATE TABLE api_uploads (
    id              uuid PRIMARY KEY,
    environment_id  bigint NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    element         text NOT NULL CHECK (element IN ('database', 'files', 'code')),
    key             text NOT NULL CHECK (key LIKE 'staging/uploads/%'),
    s3_upload_id    text NOT NULL,
    size            bigint NOT NULL CHECK (size > 0),
    part_size       bigint NOT NULL CHECK (part_size > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    requested_by    text NOT NULL,
    job_id          uuid REFERENCES jobs (id) ON DELETE SET NULL
);
CREATE INDEX api_uploads_created_idx ON api_uploads (created_at);
