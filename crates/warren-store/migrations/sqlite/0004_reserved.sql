-- Reserved domains and TCP addresses: names and ports an account owns across every edge node,
-- so no other account can bind them. Authtokens gain their own IP policies; IP resources gain
-- metadata, as in ngrok's API.
CREATE TABLE reserved_domains (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    domain       TEXT NOT NULL UNIQUE,
    description  TEXT NOT NULL DEFAULT '',
    metadata     TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL
);

CREATE TABLE reserved_addrs (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    port         INTEGER NOT NULL UNIQUE CHECK (port BETWEEN 1 AND 65535),
    description  TEXT NOT NULL DEFAULT '',
    metadata     TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL
);

CREATE INDEX reserved_domains_account ON reserved_domains (account_id, id);
CREATE INDEX reserved_addrs_account ON reserved_addrs (account_id, id);

ALTER TABLE credentials ADD COLUMN ip_policy_ids TEXT NOT NULL DEFAULT '[]';
ALTER TABLE ip_policies ADD COLUMN metadata TEXT NOT NULL DEFAULT '';
ALTER TABLE ip_policy_rules ADD COLUMN metadata TEXT NOT NULL DEFAULT '';
ALTER TABLE ip_restrictions ADD COLUMN metadata TEXT NOT NULL DEFAULT '';
