-- Program versions: a merchant's loyalty program as a kopilka.rules.v1.Program document
-- (protobuf-encoded). Versions count up per merchant; a published version is immutable.
CREATE TABLE program_versions (
    merchant_id    TEXT        NOT NULL,
    version        INTEGER      NOT NULL,
    status         TEXT        NOT NULL CHECK (status IN ('draft', 'published')),
    document       BLOB       NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    published_at   INTEGER,
    PRIMARY KEY (merchant_id, version)
);

-- Activations: which published version applies from when. The active version at time t is the
-- one with the latest activate_at <= t, so an activation can be scheduled ahead.
CREATE TABLE program_activations (
    merchant_id    TEXT        NOT NULL,
    activate_at    INTEGER NOT NULL,
    version        INTEGER      NOT NULL,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, activate_at),
    FOREIGN KEY (merchant_id, version) REFERENCES program_versions (merchant_id, version)
);
