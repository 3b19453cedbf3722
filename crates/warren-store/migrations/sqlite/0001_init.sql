-- Accounts own every other row. Secrets are stored only as SHA-256 hashes of their secret part.
CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);

CREATE TABLE credentials (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    description  TEXT NOT NULL DEFAULT '',
    secret_hash  BLOB NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    description  TEXT NOT NULL DEFAULT '',
    secret_hash  BLOB NOT NULL,
    created_at   TEXT NOT NULL
);
