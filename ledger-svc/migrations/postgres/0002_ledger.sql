-- The points ledger. Every table is keyed by merchant first (tenancy and the shard key).

-- Per-merchant settings (kopilka.ledger.v1.LedgerSettings, protobuf-encoded; defaults are
-- applied when read). A row also marks the merchant as known to the background jobs.
CREATE TABLE ledger_settings (
    merchant_id        TEXT        PRIMARY KEY,
    settings           BYTEA       NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);

-- The per-customer projection, kept in step with the journal in the same transaction, plus the
-- lifetime purchase aggregates. Locked (FOR UPDATE) by every write for the customer.
CREATE TABLE accounts (
    merchant_id        TEXT        NOT NULL,
    customer_id        TEXT        NOT NULL,
    available          NUMERIC     NOT NULL DEFAULT 0,
    pending            NUMERIC     NOT NULL DEFAULT 0,
    held               NUMERIC     NOT NULL DEFAULT 0,
    lifetime_turnover  NUMERIC     NOT NULL DEFAULT 0,
    purchase_count     BIGINT      NOT NULL DEFAULT 0,
    first_purchase_at  TIMESTAMPTZ,
    last_purchase_at   TIMESTAMPTZ,
    merged_into        TEXT,
    updated_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, customer_id)
);

-- Lots: points with their own activation and expiry. remaining = unspent (the held part
-- included); state: 1 pending, 2 active, 3 consumed, 4 expired, 5 reversed (LotState).
CREATE TABLE lots (
    merchant_id        TEXT        NOT NULL,
    lot_id             TEXT        NOT NULL,
    customer_id        TEXT        NOT NULL,
    kind               INTEGER     NOT NULL,
    action             INTEGER     NOT NULL,
    amount             NUMERIC     NOT NULL,
    remaining          NUMERIC     NOT NULL,
    held               NUMERIC     NOT NULL DEFAULT 0,
    state              INTEGER     NOT NULL,
    activates_at       TIMESTAMPTZ,
    expires_at         TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL,
    receipt_id         TEXT,
    grant_key          TEXT,
    rule_ids           TEXT        NOT NULL DEFAULT '',
    PRIMARY KEY (merchant_id, lot_id)
);
CREATE INDEX lots_by_customer ON lots (merchant_id, customer_id, state);
CREATE UNIQUE INDEX lots_by_grant_key ON lots (merchant_id, customer_id, grant_key) WHERE grant_key IS NOT NULL;
CREATE INDEX lots_due_activation ON lots (merchant_id, activates_at) WHERE state = 1;
CREATE INDEX lots_due_expiry ON lots (merchant_id, expires_at) WHERE state = 2;
CREATE INDEX lots_by_receipt ON lots (merchant_id, receipt_id) WHERE receipt_id IS NOT NULL;

-- Holds and the lots their points were taken from. state: 1 active, 2 committed, 3 voided,
-- 4 expired (HoldState).
CREATE TABLE holds (
    merchant_id        TEXT        NOT NULL,
    hold_id            TEXT        NOT NULL,
    customer_id        TEXT        NOT NULL,
    amount             NUMERIC     NOT NULL,
    committed_amount   NUMERIC     NOT NULL DEFAULT 0,
    state              INTEGER     NOT NULL,
    reference          TEXT        NOT NULL DEFAULT '',
    created_at         TIMESTAMPTZ NOT NULL,
    expires_at         TIMESTAMPTZ NOT NULL,
    finalized_at       TIMESTAMPTZ,
    PRIMARY KEY (merchant_id, hold_id)
);
CREATE INDEX holds_due ON holds (merchant_id, expires_at) WHERE state = 1;

CREATE TABLE hold_allocations (
    merchant_id        TEXT        NOT NULL,
    hold_id            TEXT        NOT NULL,
    lot_id             TEXT        NOT NULL,
    amount             NUMERIC     NOT NULL,
    PRIMARY KEY (merchant_id, hold_id, lot_id)
);

-- The journal: append-only. A transaction's entries sum to zero. customer_id is empty on
-- system-account entries (issued, redeemed, expired, reversed, restored, adjusted).
CREATE TABLE transactions (
    merchant_id        TEXT        NOT NULL,
    transaction_id     TEXT        NOT NULL,
    customer_id        TEXT        NOT NULL,
    kind               INTEGER     NOT NULL,
    amount             NUMERIC     NOT NULL,
    balance_after      NUMERIC     NOT NULL,
    occurred_at        TIMESTAMPTZ NOT NULL,
    recorded_at        TIMESTAMPTZ NOT NULL,
    receipt_id         TEXT        NOT NULL DEFAULT '',
    refund_id          TEXT        NOT NULL DEFAULT '',
    hold_id            TEXT        NOT NULL DEFAULT '',
    request_id         TEXT        NOT NULL DEFAULT '',
    description        TEXT        NOT NULL DEFAULT '',
    PRIMARY KEY (merchant_id, transaction_id)
);
CREATE INDEX transactions_by_customer ON transactions (merchant_id, customer_id, transaction_id);
CREATE INDEX transactions_by_time ON transactions (merchant_id, occurred_at);

CREATE TABLE entries (
    merchant_id        TEXT        NOT NULL,
    transaction_id     TEXT        NOT NULL,
    entry_no           INTEGER     NOT NULL,
    customer_id        TEXT        NOT NULL,
    account            TEXT        NOT NULL,
    amount             NUMERIC     NOT NULL,
    lot_id             TEXT        NOT NULL DEFAULT '',
    PRIMARY KEY (merchant_id, transaction_id, entry_no)
);
CREATE INDEX entries_by_account ON entries (merchant_id, customer_id, account);

-- Receipts: the whole receipt as recorded (kopilka.ledger.v1.Receipt, protobuf-encoded, refunds
-- excluded) plus the figures queries need. customer_id is empty for anonymous receipts.
CREATE TABLE receipts (
    merchant_id        TEXT        NOT NULL,
    receipt_id         TEXT        NOT NULL,
    customer_id        TEXT        NOT NULL,
    store_id           TEXT        NOT NULL,
    occurred_at        TIMESTAMPTZ NOT NULL,
    recorded_at        TIMESTAMPTZ NOT NULL,
    content_hash       BYTEA       NOT NULL,
    document           BYTEA       NOT NULL,
    net_amount         NUMERIC     NOT NULL,
    discount           NUMERIC     NOT NULL,
    refunded_amount    NUMERIC     NOT NULL DEFAULT 0,
    refund_state       INTEGER     NOT NULL,
    transaction_id     TEXT        NOT NULL,
    PRIMARY KEY (merchant_id, receipt_id)
);
CREATE INDEX receipts_by_customer ON receipts (merchant_id, customer_id, occurred_at);
CREATE INDEX receipts_by_time ON receipts (merchant_id, occurred_at);

-- What has been refunded of each line so far (the receipt document keeps what was sold).
CREATE TABLE receipt_lines (
    merchant_id        TEXT        NOT NULL,
    receipt_id         TEXT        NOT NULL,
    line_id            TEXT        NOT NULL,
    refunded_quantity  NUMERIC     NOT NULL DEFAULT 0,
    refunded_amount    NUMERIC     NOT NULL DEFAULT 0,
    points_reversed    NUMERIC     NOT NULL DEFAULT 0,
    points_restored    NUMERIC     NOT NULL DEFAULT 0,
    PRIMARY KEY (merchant_id, receipt_id, line_id)
);

CREATE TABLE refunds (
    merchant_id        TEXT        NOT NULL,
    receipt_id         TEXT        NOT NULL,
    refund_id          TEXT        NOT NULL,
    content_hash       BYTEA       NOT NULL,
    document           BYTEA       NOT NULL,
    recorded_at        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, receipt_id, refund_id)
);

-- Turnover per customer per UTC day: a window's turnover sums at most one row per day.
CREATE TABLE purchase_days (
    merchant_id        TEXT        NOT NULL,
    customer_id        TEXT        NOT NULL,
    day                INTEGER     NOT NULL,
    turnover           NUMERIC     NOT NULL,
    purchases          BIGINT      NOT NULL,
    PRIMARY KEY (merchant_id, customer_id, day)
);

-- Domain events written with the change that caused them (kopilka.type.v1.Event, encoded),
-- relayed to notify-svc and marked delivered.
CREATE TABLE outbox (
    merchant_id        TEXT        NOT NULL,
    event_id           TEXT        NOT NULL,
    event              BYTEA       NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL,
    delivered_at       TIMESTAMPTZ,
    PRIMARY KEY (merchant_id, event_id)
);
CREATE INDEX outbox_undelivered ON outbox (merchant_id, created_at) WHERE delivered_at IS NULL;
