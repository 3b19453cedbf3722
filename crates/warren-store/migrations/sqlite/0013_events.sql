-- Events. Every change to an account writes its event here in the change's own transaction
-- (the outbox), so an event that is written is never lost; delivery to each destination reads
-- from here in `seq` order, behind a per-destination cursor. `object` is the changed record as
-- the store knows it (`object_kind` says which), rendered into the API's shape on delivery, or
-- an event the edge built whole (`object_kind` = 'rendered').
CREATE TABLE event_outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    account_id   TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    principal    TEXT NOT NULL,
    object_kind  TEXT NOT NULL,
    object       TEXT NOT NULL,
    traffic      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX event_outbox_account ON event_outbox (account_id, seq);

-- Where events go. `target` is the destination's JSON without its secret; a webhook's signing
-- secret is sealed by the edge. `cursor` is the last outbox seq the destination has handled.
CREATE TABLE event_destinations (
    id               TEXT PRIMARY KEY,
    account_id       TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    description      TEXT NOT NULL DEFAULT '',
    metadata         TEXT NOT NULL DEFAULT '',
    format           TEXT NOT NULL,
    target           TEXT NOT NULL,
    secret_sealed    BLOB,
    created_at       TEXT NOT NULL,
    cursor           INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT NOT NULL DEFAULT '',
    last_error_at    TEXT,
    last_delivered_at TEXT,
    delivered        INTEGER NOT NULL DEFAULT 0,
    lease_node       TEXT,
    lease_until      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE event_subscriptions (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    description  TEXT NOT NULL DEFAULT '',
    metadata     TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL
);

CREATE TABLE event_sources (
    subscription_id  TEXT NOT NULL REFERENCES event_subscriptions(id) ON DELETE CASCADE,
    type             TEXT NOT NULL,
    filter           TEXT NOT NULL DEFAULT '',
    fields           TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (subscription_id, type)
);

CREATE TABLE event_subscription_destinations (
    subscription_id  TEXT NOT NULL REFERENCES event_subscriptions(id) ON DELETE CASCADE,
    destination_id   TEXT NOT NULL REFERENCES event_destinations(id),
    PRIMARY KEY (subscription_id, destination_id)
);

-- Events a destination refused too many times, set aside so the ones after them flow.
CREATE TABLE event_parked (
    destination_id  TEXT NOT NULL REFERENCES event_destinations(id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    event_id        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    error           TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    parked_at       TEXT NOT NULL,
    PRIMARY KEY (destination_id, seq)
);
