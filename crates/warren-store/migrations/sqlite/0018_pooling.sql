-- Endpoint pooling: several sessions (of one account, every one asking for it) may serve one
-- URL. The route key stays unique among endpoints that are not pooled; the store's insert
-- decides the rest (a pooled bind joins only pooled endpoints of its own account). SQLite
-- cannot drop a constraint, so the table is made again with its indexes and triggers.
CREATE TABLE endpoints_new (
    id            TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    session_id    TEXT NOT NULL REFERENCES tunnel_sessions(id) ON DELETE CASCADE,
    client_id     TEXT NOT NULL,
    proto         TEXT NOT NULL,
    url           TEXT NOT NULL,
    route_key     TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    host          TEXT NOT NULL DEFAULT '',
    name          TEXT NOT NULL DEFAULT '',
    metadata      TEXT NOT NULL DEFAULT '',
    description   TEXT NOT NULL DEFAULT '',
    upstream_url  TEXT NOT NULL DEFAULT '',
    pooled        INTEGER NOT NULL DEFAULT 0
);
INSERT INTO endpoints_new (id, account_id, session_id, client_id, proto, url, route_key, created_at, host,
                           name, metadata, description, upstream_url)
    SELECT id, account_id, session_id, client_id, proto, url, route_key, created_at, host,
           name, metadata, description, upstream_url FROM endpoints;
DROP TABLE endpoints;
ALTER TABLE endpoints_new RENAME TO endpoints;
CREATE UNIQUE INDEX endpoints_route_unpooled ON endpoints (route_key) WHERE pooled = 0;
CREATE INDEX endpoints_route ON endpoints (route_key);
CREATE INDEX endpoints_account ON endpoints (account_id, id);
CREATE INDEX endpoints_session ON endpoints (session_id);
CREATE INDEX endpoints_host ON endpoints (host);
CREATE TRIGGER endpoints_bind AFTER INSERT ON endpoints
BEGIN UPDATE route_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER endpoints_unbind AFTER DELETE ON endpoints
BEGIN UPDATE route_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER endpoints_move AFTER UPDATE ON endpoints
BEGIN UPDATE route_generation SET generation = generation + 1 WHERE id = 1; END;
