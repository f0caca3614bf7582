-- Idempotency records: every mutating RPC of ledger-svc carries a request_id. The first answer is
-- stored with a digest of the request so that a retry gets the same answer and a different
-- request reusing the id is refused (IDEMPOTENCY_KEY_REUSED). Pruned after a retention period.
CREATE TABLE idempotency_keys (
    merchant_id  TEXT        NOT NULL,
    request_id   TEXT        NOT NULL,
    operation    TEXT        NOT NULL,
    request_hash BYTEA       NOT NULL,
    response     BYTEA,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, request_id)
);

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (merchant_id, created_at);
