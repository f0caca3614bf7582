-- The relay to notify-svc: outbox rows are claimed with a lease (claimed_until) before they are
-- sent, so several replicas relay side by side without sending a batch twice at once (a lapsed
-- lease is claimed again), and marked delivered once notify-svc acknowledged them. Only rows
-- still to send are indexed for the relay.
ALTER TABLE outbox ADD COLUMN delivered_at  TIMESTAMPTZ;
ALTER TABLE outbox ADD COLUMN claimed_until TIMESTAMPTZ;
CREATE INDEX outbox_undelivered ON outbox (merchant_id, created_at) WHERE delivered_at IS NULL;
