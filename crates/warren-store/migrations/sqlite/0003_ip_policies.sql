-- IP policies (sets of allow/deny CIDR rules) and IP restrictions (which policies guard agent
-- sessions, the API, the dashboard or endpoints; enforced or log-only).
CREATE TABLE ip_policies (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    description  TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL
);

CREATE TABLE ip_policy_rules (
    id            TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    ip_policy_id  TEXT NOT NULL REFERENCES ip_policies(id) ON DELETE CASCADE,
    cidr          TEXT NOT NULL,
    action        TEXT NOT NULL CHECK (action IN ('allow', 'deny')),
    description   TEXT NOT NULL DEFAULT '',
    created_at    TEXT NOT NULL
);

CREATE TABLE ip_restrictions (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    type           TEXT NOT NULL CHECK (type IN ('agent', 'api', 'dashboard', 'endpoints')),
    enforced       INTEGER NOT NULL,
    ip_policy_ids  TEXT NOT NULL DEFAULT '[]',
    description    TEXT NOT NULL DEFAULT '',
    created_at     TEXT NOT NULL
);

CREATE INDEX ip_policy_rules_policy ON ip_policy_rules (ip_policy_id);
CREATE INDEX ip_restrictions_account ON ip_restrictions (account_id, type);
