-- A host name belongs to one account across every scheme (http, https, tls): the host of
-- each http, https and tls endpoint is kept apart from its route key, so a bind can check
-- every scheme at once. Empty for tcp endpoints.
ALTER TABLE endpoints ADD COLUMN host TEXT NOT NULL DEFAULT '';
UPDATE endpoints SET host = split_part(route_key, '://', 2) WHERE proto IN ('http', 'https', 'tls');
CREATE INDEX endpoints_host ON endpoints (host);
