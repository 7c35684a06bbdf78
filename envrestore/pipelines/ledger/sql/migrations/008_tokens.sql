-- API bearer tokens (issue 10). A token is `envr_<id>_<secret>`: the id finds
-- the row (one primary-key lookup), and only a SHA-256 digest of the 256-bit
-- random secret is kept, so the ledger never holds a usable token and a token
-- cannot be shown again. Scope: `sites` NULL means every site; `scopes` are
-- actions (read, backup, restore, import, link, admin).
CREATE TABLE tokens (
    id            text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    name          text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$'),
    hash          text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    sites         text[],
    scopes        text[] NOT NULL CHECK (cardinality(scopes) > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    created_by    text NOT NULL
);
