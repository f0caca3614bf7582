-- Whether the "points about to expire" notice went out for a lot (sent once per lot).
ALTER TABLE lots ADD COLUMN expiry_notified INTEGER NOT NULL DEFAULT 0;
CREATE INDEX lots_to_notify ON lots (merchant_id, expires_at) WHERE state = 2 AND expiry_notified = 0;
