-- Checkouts: one row per (merchant, register receipt id), with its state and the stored answer
-- (an encoded kopilka.gateway.v1.Checkout), so repeats and GetCheckout return what was answered.
CREATE TABLE checkouts (
    merchant_id    TEXT        NOT NULL,
    receipt_id     TEXT        NOT NULL,
    state          TEXT        NOT NULL,
    customer_id    TEXT        NOT NULL DEFAULT '',
    hold_id        TEXT        NOT NULL DEFAULT '',
    -- Digest of the confirmed content: a Confirm repeated with other content is a conflict.
    content_hash   BYTEA,
    body           BYTEA       NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, receipt_id)
);

-- Answers of mutating calls by request id: a retry gets the first answer.
CREATE TABLE gateway_requests (
    merchant_id    TEXT        NOT NULL,
    request_id     TEXT        NOT NULL,
    operation      TEXT        NOT NULL,
    request_hash   BYTEA       NOT NULL,
    response       BYTEA       NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, request_id)
);
CREATE INDEX gateway_requests_by_age ON gateway_requests (created_at);

-- Runs of scheduled jobs: the row for (job, period, merchant) is claimed by one replica.
CREATE TABLE job_runs (
    job            TEXT        NOT NULL,
    period         TEXT        NOT NULL,
    merchant_id    TEXT        NOT NULL,
    claimed_by     TEXT        NOT NULL,
    claimed_at     TIMESTAMPTZ NOT NULL,
    finished_at    TIMESTAMPTZ,
    outcome        TEXT        NOT NULL DEFAULT '',
    PRIMARY KEY (job, period, merchant_id)
);
