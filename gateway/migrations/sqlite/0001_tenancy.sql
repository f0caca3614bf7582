-- Tenancy: merchants, their stores and cash-register terminals, and the API keys that
-- authenticate every call. Keys are stored as SHA-256 digests of their secret part only.
CREATE TABLE merchants (
    merchant_id    TEXT        PRIMARY KEY,
    name           TEXT        NOT NULL,
    currency       TEXT        NOT NULL,
    time_zone      TEXT        NOT NULL,
    phone_region   TEXT        NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE TABLE stores (
    merchant_id    TEXT        NOT NULL REFERENCES merchants (merchant_id),
    store_id       TEXT        NOT NULL,
    name           TEXT        NOT NULL,
    address        TEXT        NOT NULL DEFAULT '',
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, store_id)
);

CREATE TABLE terminals (
    merchant_id    TEXT        NOT NULL,
    terminal_id    TEXT        NOT NULL,
    store_id       TEXT        NOT NULL,
    name           TEXT        NOT NULL,
    disabled_at    INTEGER,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, terminal_id),
    FOREIGN KEY (merchant_id, store_id) REFERENCES stores (merchant_id, store_id)
);

-- scope: 'terminal' (checkouts, registration), 'admin' (merchant administration),
-- 'platform' (creating merchants). A terminal key names its terminal.
CREATE TABLE api_keys (
    merchant_id    TEXT        NOT NULL,
    key_id         TEXT        NOT NULL,
    scope          TEXT        NOT NULL CHECK (scope IN ('terminal', 'admin', 'platform')),
    terminal_id    TEXT,
    label          TEXT        NOT NULL DEFAULT '',
    secret_digest  BLOB       NOT NULL,
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    PRIMARY KEY (merchant_id, key_id)
);

-- A presented key carries its key_id, and authentication finds the merchant from it: this
-- lookup is the one place that cannot start from a merchant_id. api_keys is small and read
-- on every call (cached), so it stays a reference table when the rest shards by merchant.
CREATE UNIQUE INDEX api_keys_by_key_id ON api_keys (key_id);
