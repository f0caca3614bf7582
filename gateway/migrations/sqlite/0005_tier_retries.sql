-- Tier decisions after a purchase that could not be made when the receipt was booked (rules-svc
-- or cards-svc unavailable): the DecideTier request, kept with the booked checkout and retried
-- by gateway/src/tier_retry.rs until it is decided.
CREATE TABLE tier_retries (
    merchant_id     TEXT        NOT NULL,
    receipt_id      TEXT        NOT NULL,
    -- An encoded kopilka.rules.v1.DecideTierRequest (trigger PURCHASE).
    request         BLOB       NOT NULL,
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT        NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, receipt_id)
);
CREATE INDEX tier_retries_due ON tier_retries (next_attempt_at);
