-- Customers, their identifiers, tiers and registration links (FEATURES C1–C8).
-- Documents (profile, consents, registration source, tier, tier assignment, link) are stored as
-- encoded protobuf next to the columns that queries filter or join on.

-- Per-merchant settings; tiers_version is bumped on every tier-definition change and names the
-- cached copy of the definitions, so a cached copy is never stale: a change makes a new name.
CREATE TABLE cards_settings (
    merchant_id   TEXT        NOT NULL PRIMARY KEY,
    settings      BYTEA       NOT NULL,
    link_secret   BYTEA       NOT NULL,
    tiers_version BIGINT      NOT NULL DEFAULT 0,
    updated_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE customers (
    merchant_id   TEXT        NOT NULL,
    customer_id   TEXT        NOT NULL,
    state         INTEGER     NOT NULL,
    merged_into   TEXT        NOT NULL DEFAULT '',
    external_id   TEXT,
    phone         TEXT        NOT NULL DEFAULT '',
    birth_month   INTEGER     NOT NULL DEFAULT 0,
    birth_day     INTEGER     NOT NULL DEFAULT 0,
    gender        INTEGER     NOT NULL DEFAULT 0,
    consent_mask  INTEGER     NOT NULL DEFAULT 0,
    referrer_id   TEXT        NOT NULL DEFAULT '',
    referred_at   TIMESTAMPTZ,
    tier_code     TEXT        NOT NULL DEFAULT '',
    -- Sequence number of the current tier assignment in tier_history (0 = none); names the
    -- cached copy of the assignment.
    tier_seq      BIGINT      NOT NULL DEFAULT 0,
    registered_at TIMESTAMPTZ NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    version       BIGINT      NOT NULL,
    profile       BYTEA       NOT NULL,
    consents      BYTEA       NOT NULL,
    registration  BYTEA       NOT NULL,
    PRIMARY KEY (merchant_id, customer_id)
);
CREATE UNIQUE INDEX customers_external_id ON customers (merchant_id, external_id) WHERE external_id IS NOT NULL;
CREATE INDEX customers_by_created ON customers (merchant_id, created_at, customer_id);
CREATE INDEX customers_by_referrer ON customers (merchant_id, referrer_id, referred_at) WHERE referrer_id <> '';
CREATE INDEX customers_by_birthday ON customers (merchant_id, birth_month, birth_day);
CREATE INDEX customers_by_tier ON customers (merchant_id, tier_code);

-- Every identifier is unique per merchant, blocked ones included (a lost card stays its owner's).
CREATE TABLE identifiers (
    merchant_id    TEXT        NOT NULL,
    kind           INTEGER     NOT NULL,
    value          TEXT        NOT NULL,
    customer_id    TEXT        NOT NULL,
    state          INTEGER     NOT NULL,
    block_reason   INTEGER     NOT NULL DEFAULT 0,
    block_comment  TEXT        NOT NULL DEFAULT '',
    added_at       TIMESTAMPTZ NOT NULL,
    blocked_at     TIMESTAMPTZ,
    replaced_kind  INTEGER     NOT NULL DEFAULT 0,
    replaced_value TEXT        NOT NULL DEFAULT '',
    PRIMARY KEY (merchant_id, kind, value)
);
CREATE INDEX identifiers_by_customer ON identifiers (merchant_id, customer_id);

CREATE TABLE tiers (
    merchant_id TEXT        NOT NULL,
    code        TEXT        NOT NULL,
    rank        INTEGER     NOT NULL,
    tier        BYTEA       NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, code)
);
CREATE UNIQUE INDEX tiers_rank ON tiers (merchant_id, rank);

-- Every tier assignment; a customer's current one is the row with seq = customers.tier_seq.
CREATE TABLE tier_history (
    merchant_id TEXT        NOT NULL,
    customer_id TEXT        NOT NULL,
    seq         BIGINT      NOT NULL,
    assignment  BYTEA       NOT NULL,
    assigned_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, customer_id, seq)
);

CREATE TABLE registration_links (
    merchant_id TEXT        NOT NULL,
    link_id     TEXT        NOT NULL,
    link        BYTEA       NOT NULL,
    max_uses    INTEGER     NOT NULL,
    uses        INTEGER     NOT NULL DEFAULT 0,
    revoked     BOOLEAN     NOT NULL DEFAULT FALSE,
    expires_at  TIMESTAMPTZ,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, link_id)
);
CREATE INDEX registration_links_by_created ON registration_links (merchant_id, created_at, link_id);

-- Facts for notify-svc and the gateway (CustomerRegistered, TierChanged, CardBlocked …),
-- written in the transaction that caused them.
CREATE TABLE outbox (
    merchant_id TEXT        NOT NULL,
    event_id    TEXT        NOT NULL,
    event       BYTEA       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, event_id)
);
CREATE INDEX outbox_by_created ON outbox (created_at);
