-- The account-wide traffic policy: evaluated before every endpoint's own policy, set by
-- administrators through the API; agents cannot remove it.
CREATE TABLE account_traffic_policies (
    account_id  TEXT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    document    TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
