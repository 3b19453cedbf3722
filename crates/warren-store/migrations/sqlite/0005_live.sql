-- Live state, shared by every edge node on the same database: which nodes are up, their
-- agent sessions and bound endpoints, and commands (stop, restart) for sessions on another
-- node. A node's rows go when the node stops or is found dead (ON DELETE CASCADE).
CREATE TABLE edge_nodes (
    id          TEXT PRIMARY KEY,
    started_at  TEXT NOT NULL,
    last_seen   BIGINT NOT NULL
);

CREATE TABLE tunnel_sessions (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    node_id        TEXT NOT NULL REFERENCES edge_nodes(id) ON DELETE CASCADE,
    credential_id  TEXT NOT NULL,
    ip             TEXT NOT NULL,
    agent_version  TEXT NOT NULL DEFAULT '',
    os             TEXT NOT NULL DEFAULT '',
    metadata       TEXT NOT NULL DEFAULT '',
    started_at     TEXT NOT NULL
);

-- route_key (scheme://host for http and https, the URL for tcp) is unique across nodes, so
-- two nodes never serve one name, whatever port each shows in its URLs.
CREATE TABLE endpoints (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    session_id  TEXT NOT NULL REFERENCES tunnel_sessions(id) ON DELETE CASCADE,
    client_id   TEXT NOT NULL,
    proto       TEXT NOT NULL,
    url         TEXT NOT NULL,
    route_key   TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);

CREATE TABLE session_commands (
    id          TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL REFERENCES edge_nodes(id) ON DELETE CASCADE,
    session_id  TEXT NOT NULL,
    command     TEXT NOT NULL CHECK (command IN ('stop', 'restart'))
);

CREATE INDEX tunnel_sessions_account ON tunnel_sessions (account_id, id);
CREATE INDEX tunnel_sessions_node ON tunnel_sessions (node_id);
CREATE INDEX endpoints_account ON endpoints (account_id, id);
CREATE INDEX endpoints_session ON endpoints (session_id);
CREATE INDEX session_commands_node ON session_commands (node_id);
