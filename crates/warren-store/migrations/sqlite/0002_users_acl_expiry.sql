-- Users with roles; authtoken ACLs, metadata and owners; API key metadata, owners and expiry.
CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    email       TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'developer', 'read-only')),
    created_at  TEXT NOT NULL,
    UNIQUE (account_id, email)
);

ALTER TABLE credentials ADD COLUMN metadata TEXT NOT NULL DEFAULT '';
ALTER TABLE credentials ADD COLUMN acl TEXT NOT NULL DEFAULT '[]';
ALTER TABLE credentials ADD COLUMN owner_id TEXT REFERENCES users(id) ON DELETE SET NULL;

ALTER TABLE api_keys ADD COLUMN metadata TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN owner_id TEXT REFERENCES users(id) ON DELETE SET NULL;
ALTER TABLE api_keys ADD COLUMN expires_at TEXT;

CREATE INDEX credentials_account ON credentials (account_id, id);
CREATE INDEX api_keys_account ON api_keys (account_id, id);
