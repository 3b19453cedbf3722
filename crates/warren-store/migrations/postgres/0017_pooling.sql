-- Endpoint pooling: several sessions (of one account, every one asking for it) may serve one
-- URL. The route key stays unique among endpoints that are not pooled; the store's insert
-- decides the rest (a pooled bind joins only pooled endpoints of its own account).
ALTER TABLE endpoints ADD COLUMN pooled BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE endpoints DROP CONSTRAINT endpoints_route_key_key;
CREATE UNIQUE INDEX endpoints_route_unpooled ON endpoints (route_key) WHERE NOT pooled;
CREATE INDEX endpoints_route ON endpoints (route_key);
