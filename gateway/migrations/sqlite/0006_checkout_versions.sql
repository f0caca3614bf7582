-- Every write of a checkout is conditional on the version it was read at, so with several
-- gateway replicas a transition decided on a stale read is never stored (checkout/state.rs).
ALTER TABLE checkouts ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

-- Answers kept under a receipt (not a caller's request id) move to keys no caller's request id
-- can be: caller ids have no spaces (gateway/src/idempotency.rs).
UPDATE gateway_requests SET request_id = 'receipt ' || substr(request_id, 9)
 WHERE operation = 'book' AND request_id LIKE 'receipt:%';
