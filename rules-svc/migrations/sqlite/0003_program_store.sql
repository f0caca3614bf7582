-- What ProgramService shows about a version besides its document: an etag that changes on every
-- draft update (optimistic concurrency), the document's fingerprint, where it was copied from,
-- the author's note and name, and what evaluating it needs (computed by validation; NULL until
-- the version is validated or published, and again after a draft changes).
ALTER TABLE program_versions ADD COLUMN etag TEXT NOT NULL DEFAULT '';
ALTER TABLE program_versions ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';
ALTER TABLE program_versions ADD COLUMN based_on_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE program_versions ADD COLUMN comment TEXT NOT NULL DEFAULT '';
ALTER TABLE program_versions ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
ALTER TABLE program_versions ADD COLUMN needs BLOB;

-- The last version number handed out per merchant. A deleted draft's number is never reused,
-- so a number names one document forever (idempotent answers and logs stay true).
CREATE TABLE program_merchants (
    merchant_id  TEXT   NOT NULL PRIMARY KEY,
    last_version INTEGER NOT NULL
);
INSERT INTO program_merchants (merchant_id, last_version)
SELECT merchant_id, MAX(version) FROM program_versions GROUP BY merchant_id;

-- Activations get an id (to cancel a scheduled one) and the requester's name.
ALTER TABLE program_activations ADD COLUMN activation_id TEXT NOT NULL DEFAULT '';
ALTER TABLE program_activations ADD COLUMN requested_by TEXT NOT NULL DEFAULT '';
UPDATE program_activations
SET activation_id = 'legacy-' || activate_at;
CREATE UNIQUE INDEX program_activations_by_id ON program_activations (merchant_id, activation_id);

-- The change feed: one row per publish, activation, cancellation or catalog change, written in
-- the same transaction. `seq` counts up per merchant and is taken under the merchant's row lock
-- (a primary-key conflict retries), so a merchant's changes commit in seq order. Every replica
-- polls the newest rows and drops what it caches for a merchant whose seq moved.
CREATE TABLE program_changes (
    merchant_id TEXT        NOT NULL,
    seq         INTEGER      NOT NULL,
    kind        TEXT        NOT NULL,
    changed_at  INTEGER     NOT NULL,
    PRIMARY KEY (merchant_id, seq)
);
CREATE INDEX program_changes_by_time ON program_changes (changed_at);

-- The merchant's product category tree (CatalogService). parent_id '' = top level.
CREATE TABLE categories (
    merchant_id TEXT        NOT NULL,
    category_id TEXT        NOT NULL,
    name        TEXT        NOT NULL,
    parent_id   TEXT        NOT NULL,
    updated_at  INTEGER     NOT NULL,
    PRIMARY KEY (merchant_id, category_id)
);
CREATE INDEX categories_by_parent ON categories (merchant_id, parent_id, category_id);
