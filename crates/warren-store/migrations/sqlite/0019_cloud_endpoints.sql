-- Cloud endpoints: endpoints that live on the edge without an agent (ngrok's type "cloud"),
-- made through the API and served by every node from this table. A (scheme, host) is one
-- endpoint's, whether an agent's (endpoints) or a cloud one: the store's writers check both
-- tables under one lock.
CREATE TABLE cloud_endpoints (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    url             TEXT NOT NULL,
    proto           TEXT NOT NULL,
    host            TEXT NOT NULL,
    traffic_policy  TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    metadata        TEXT NOT NULL DEFAULT '',
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    owner_id        TEXT
);
CREATE UNIQUE INDEX cloud_endpoints_route ON cloud_endpoints (proto, host);
CREATE INDEX cloud_endpoints_account ON cloud_endpoints (account_id, id);
CREATE INDEX cloud_endpoints_host ON cloud_endpoints (host);
