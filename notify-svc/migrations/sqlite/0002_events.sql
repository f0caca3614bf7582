-- Domain events received from the producers' outboxes (EventService.IngestEvents), stored
-- before they are acknowledged: the facts triggered messages and webhooks are driven by. The
-- primary key de-duplicates them (relays deliver at least once). processed_at is set by the
-- consumer that acts on an event; unprocessed events are indexed for it.
CREATE TABLE events (
    merchant_id  TEXT        NOT NULL,
    event_id     TEXT        NOT NULL,
    event_type   INTEGER     NOT NULL,
    customer_id  TEXT        NOT NULL,
    producer     TEXT        NOT NULL,
    occurred_at  INTEGER,
    event        BLOB       NOT NULL,
    received_at  INTEGER NOT NULL,
    processed_at INTEGER,
    PRIMARY KEY (merchant_id, event_id)
);
CREATE INDEX events_unprocessed ON events (merchant_id, received_at) WHERE processed_at IS NULL;
