-- Clustering: where each node takes relayed visitor streams from the others, the cluster CA
-- their relay links trust (its key sealed with the master key every node shares), and a
-- generation that every change to the endpoints table moves, so nodes reload their view of
-- who holds which endpoint only when it changed.
ALTER TABLE edge_nodes ADD COLUMN relay_addr TEXT NOT NULL DEFAULT '';

CREATE TABLE cluster_ca (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem    TEXT NOT NULL,
    key_sealed  BLOB NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE route_generation (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  BIGINT NOT NULL
);
INSERT INTO route_generation (id, generation) VALUES (1, 0);

CREATE TRIGGER endpoints_bind AFTER INSERT ON endpoints
BEGIN UPDATE route_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER endpoints_unbind AFTER DELETE ON endpoints
BEGIN UPDATE route_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER endpoints_move AFTER UPDATE ON endpoints
BEGIN UPDATE route_generation SET generation = generation + 1 WHERE id = 1; END;

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
