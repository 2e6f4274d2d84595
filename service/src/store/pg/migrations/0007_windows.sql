-- Hammer's PostgreSQL store, schema version 7: maintenance windows.
--
-- One row per window, in its user's list (`owner`), the record whole in `rec`. A user's
-- windows are read by (owner, created_at, id); an insert counts the user's rows under a
-- per-user advisory lock, so the bound (100 per user) holds across replicas.

CREATE TABLE windows (
    owner      TEXT COLLATE "C" NOT NULL,
    id         TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    rec        JSONB NOT NULL,
    PRIMARY KEY (owner, id)
);
CREATE INDEX windows_by_owner ON windows (owner, created_at, id);
