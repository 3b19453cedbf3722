-- A session is resumed (its endpoints handed to a reconnecting agent) only by whoever holds
-- the cookie the edge gave it; the store keeps the cookie's SHA-256, for any node to check.
ALTER TABLE tunnel_sessions ADD COLUMN resume_hash BLOB NOT NULL DEFAULT x'';
