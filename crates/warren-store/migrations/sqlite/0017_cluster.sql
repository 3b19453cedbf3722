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
