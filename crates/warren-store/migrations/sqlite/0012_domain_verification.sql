-- A custom domain is the account's only once it has shown control of its DNS: a TXT record
-- `_warren-challenge.<domain>` holding the reservation's token. Until then it cannot be bound
-- and gets no certificate. Names under the edge's base domain are verified when reserved;
-- reservations made before this check existed are kept as verified.
ALTER TABLE reserved_domains ADD COLUMN verify_token TEXT NOT NULL DEFAULT '';
ALTER TABLE reserved_domains ADD COLUMN verified_at TEXT;
UPDATE reserved_domains SET verified_at = created_at;
