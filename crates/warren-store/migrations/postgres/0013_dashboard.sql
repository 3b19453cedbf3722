-- Dashboard sign-in. A user's password is an argon2id PHC string (NULL: no password, so
-- only a one-time link or single sign-on signs them in). Wrong passwords are counted and
-- lock the user out until `locked_until` (unix seconds).
ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN failed_sign_ins BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until BIGINT NOT NULL DEFAULT 0;

-- Browser sessions: the cookie's SHA-256 (hex), never the cookie; the CSRF token forms carry.
CREATE TABLE dashboard_sessions (
    token_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    ip TEXT NOT NULL,
    via TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_user ON dashboard_sessions (user_id);

-- One-time sign-in links (the first start prints one; `warren admin users sign-in-link`
-- makes more): SHA-256 of the link's secret, used once, expiring.
CREATE TABLE sign_in_links (
    token_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL
);
