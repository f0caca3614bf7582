-- Stamp card balances per customer (R11 stamp cards: "every 6th pizza free").
CREATE TABLE stamps (
    merchant_id        TEXT        NOT NULL,
    customer_id        TEXT        NOT NULL,
    stamp_card_id      TEXT        NOT NULL,
    count              INTEGER      NOT NULL,
    PRIMARY KEY (merchant_id, customer_id, stamp_card_id)
);

-- What each receipt line sold, for segments ("bought nappies") and favourite products.
ALTER TABLE receipt_lines ADD COLUMN product_id TEXT NOT NULL DEFAULT '';
ALTER TABLE receipt_lines ADD COLUMN category_ids TEXT NOT NULL DEFAULT '';
CREATE INDEX receipt_lines_by_product ON receipt_lines (merchant_id, product_id);
