-- The relay to notify-svc claims outbox rows with a lease before sending them, so several
-- replicas relay side by side without sending a batch twice at once; a lapsed lease (a replica
-- that died mid-batch) is claimed again. delivered_at is set once notify-svc acknowledged a row.
ALTER TABLE outbox ADD COLUMN claimed_until TIMESTAMPTZ;
