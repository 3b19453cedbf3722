-- Who made a reservation or uploaded a certificate: developers may change and release only
-- their own; admins, everything. NULL (rows from before, or of a removed user) is admins' only.
ALTER TABLE reserved_domains ADD COLUMN owner_id TEXT;
ALTER TABLE reserved_addrs ADD COLUMN owner_id TEXT;
ALTER TABLE uploaded_certificates ADD COLUMN owner_id TEXT;
