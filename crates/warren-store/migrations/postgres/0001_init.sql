-- The same model as the SQLite migrations 0001 + 0002. Ids use the C collation so that they
-- sort bytewise (by creation time) as they do in SQLite.
CREATE TABLE accounts (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);

CREATE TABLE users (
    id          TEXT COLLATE "C" PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    email       TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'developer', 'read-only')),
    created_at  TEXT NOT NULL,
    UNIQUE (account_id, email)
);

CREATE TABLE credentials (
    id           TEXT COLLATE "C" PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    description  TEXT NOT NULL DEFAULT '',
    secret_hash  BYTEA NOT NULL,
    created_at   TEXT NOT NULL,
    metadata     TEXT NOT NULL DEFAULT '',
    acl          TEXT NOT NULL DEFAULT '[]',
    owner_id     TEXT REFERENCES users(id) ON DELETE SET NULL
);

CREATE TABLE api_keys (
    id           TEXT COLLATE "C" PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    description  TEXT NOT NULL DEFAULT '',
    secret_hash  BYTEA NOT NULL,
    created_at   TEXT NOT NULL,
    metadata     TEXT NOT NULL DEFAULT '',
    owner_id     TEXT REFERENCES users(id) ON DELETE SET NULL,
    expires_at   TEXT
);

CREATE INDEX credentials_account ON credentials (account_id, id);
CREATE INDEX api_keys_account ON api_keys (account_id, id);
