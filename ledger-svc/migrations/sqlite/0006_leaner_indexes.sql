-- Fewer index writes per receipt: lots that never expire are never due for expiry or notices,
-- and merchant-wide entries (empty customer or lot) are never looked up by customer or lot.
DROP INDEX lots_due_expiry;
CREATE INDEX lots_due_expiry ON lots (merchant_id, expires_at) WHERE state = 2 AND expires_at IS NOT NULL;
DROP INDEX lots_to_notify;
CREATE INDEX lots_to_notify ON lots (merchant_id, expires_at) WHERE state = 2 AND expiry_notified = 0 AND expires_at IS NOT NULL;
DROP INDEX entries_by_account;
CREATE INDEX entries_by_account ON entries (merchant_id, customer_id, account) WHERE customer_id <> '';
DROP INDEX entries_by_lot;
CREATE INDEX entries_by_lot ON entries (merchant_id, lot_id) WHERE lot_id <> '';
