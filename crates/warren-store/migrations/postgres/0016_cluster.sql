-- Clustering: where each node takes relayed visitor streams from the others, the cluster CA
-- their relay links trust (its key sealed with the master key every node shares), and a
-- generation that every change to the endpoints table moves (cascaded deletes included), so
-- nodes reload their view of who holds which endpoint only when it changed. The change is
-- also announced on the channel `warren_routes`.
ALTER TABLE edge_nodes ADD COLUMN relay_addr TEXT NOT NULL DEFAULT '';

CREATE TABLE cluster_ca (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem    TEXT NOT NULL,
    key_sealed  BYTEA NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE route_generation (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  BIGINT NOT NULL
);
INSERT INTO route_generation (id, generation) VALUES (1, 0);

CREATE FUNCTION warren_routes_changed() RETURNS trigger AS $$
BEGIN
    UPDATE route_generation SET generation = generation + 1 WHERE id = 1;
    PERFORM pg_notify('warren_routes', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER endpoints_changed AFTER INSERT OR UPDATE OR DELETE ON endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION warren_routes_changed();

-- One certificate order per name across the nodes: a node orders only while it holds the
-- name's row here (a lease, judged by the database's clock), and any node answers the
-- challenges of an order in flight from the answers kept here.
CREATE TABLE acme_orders (
    domain      TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);

CREATE TABLE acme_challenges (
    id          TEXT PRIMARY KEY,
    answer      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);

-- Certificates stored by one node reach the others at once (they also poll).
CREATE FUNCTION warren_certificates_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('warren_certificates', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tls_certificates_changed AFTER INSERT OR UPDATE OR DELETE ON tls_certificates
    FOR EACH STATEMENT EXECUTE FUNCTION warren_certificates_changed();
