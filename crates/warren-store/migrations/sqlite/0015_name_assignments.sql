-- Random names an authtoken's endpoints were given, so that an agent reconnecting after an
-- edge restart (or restarted itself) gets the same URL for the same endpoint. The key is the
-- protocol, the endpoint's name and its upstream, as the Bind gives them. Unused for 7 days,
-- an assignment is forgotten; it goes with its authtoken.
CREATE TABLE name_assignments (
    credential_id TEXT NOT NULL REFERENCES credentials(id) ON DELETE CASCADE,
    bind_key TEXT NOT NULL,
    host TEXT NOT NULL,
    used_at BIGINT NOT NULL,
    PRIMARY KEY (credential_id, bind_key)
);
