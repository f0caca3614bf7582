-- When a terminal last called (with any of its keys); api_keys.last_used_at is its key's twin.
-- Both are written at most once a minute per key and replica (gateway/src/auth.rs).
ALTER TABLE terminals ADD COLUMN last_seen_at INTEGER;
