-- Hammer's PostgreSQL store, schema version 3: web sessions (shared by replicas, kept over
-- restarts).
--
-- A session is found by the SHA-256 of its id (the cookie carries the id). `seq` is the
-- order of insertion: a user's oldest session is the one the caps end first. Inserts run one
-- at a time (a transaction-scoped advisory lock) so the caps hold across replicas; each
-- removes at most a batch of expired sessions, by `expires_at`.

CREATE TABLE sessions (
    id_hash    TEXT COLLATE "C" PRIMARY KEY,
    seq        BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    user_id    TEXT COLLATE "C" NOT NULL,
    token_hash TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id, seq);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
