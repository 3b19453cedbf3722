-- Certificates the edge serves for custom domains (from ACME or uploaded) and its ACME
-- accounts. Private keys and account keys are sealed with the edge's master key (AES-256-GCM)
-- before they reach the database; the database never holds them in plaintext.
CREATE TABLE tls_certificates (
    domain      TEXT PRIMARY KEY,
    chain_pem   TEXT NOT NULL,
    key_sealed  BLOB NOT NULL,
    not_after   BIGINT NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('acme', 'upload')),
    created_at  TEXT NOT NULL
);

CREATE TABLE acme_accounts (
    directory           TEXT PRIMARY KEY,
    credentials_sealed  BLOB NOT NULL,
    created_at          TEXT NOT NULL
);
