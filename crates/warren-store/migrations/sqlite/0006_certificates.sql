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

-- Certificates operators upload (ngrok's /tls_certificates), attached to reserved domains.
CREATE TABLE uploaded_certificates (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    description  TEXT NOT NULL DEFAULT '',
    metadata     TEXT NOT NULL DEFAULT '',
    chain_pem    TEXT NOT NULL,
    key_sealed   BLOB NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE INDEX uploaded_certificates_account ON uploaded_certificates (account_id, id);

ALTER TABLE reserved_domains ADD COLUMN certificate_id TEXT REFERENCES uploaded_certificates(id);
