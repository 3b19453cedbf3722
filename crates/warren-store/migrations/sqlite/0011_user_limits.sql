-- What an admin allows a user's authtokens at most: bind rules (NULL: no ceiling) and IP
-- policies every one of their tokens must pass. Only admins change these.
ALTER TABLE users ADD COLUMN authtoken_acl TEXT;
ALTER TABLE users ADD COLUMN authtoken_ip_policy_ids TEXT NOT NULL DEFAULT '[]';
