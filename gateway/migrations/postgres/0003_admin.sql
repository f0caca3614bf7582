-- Administration: the store, terminal and key fields AdminService reads and writes.
ALTER TABLE stores ADD COLUMN time_zone TEXT NOT NULL DEFAULT '';
ALTER TABLE stores ADD COLUMN external_id TEXT NOT NULL DEFAULT '';
ALTER TABLE stores ADD COLUMN wallet_location_text TEXT NOT NULL DEFAULT '';
ALTER TABLE stores ADD COLUMN latitude DOUBLE PRECISION;
ALTER TABLE stores ADD COLUMN longitude DOUBLE PRECISION;
ALTER TABLE stores ADD COLUMN active BOOLEAN NOT NULL DEFAULT TRUE;

ALTER TABLE terminals ADD COLUMN external_id TEXT NOT NULL DEFAULT '';

ALTER TABLE api_keys ADD COLUMN expires_at TIMESTAMPTZ;
ALTER TABLE api_keys ADD COLUMN last_used_at TIMESTAMPTZ;
