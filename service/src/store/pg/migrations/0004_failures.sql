-- Hammer's PostgreSQL store, schema version 4: failure counts (failed enrollments per source
-- address), shared by replicas.
--
-- One row per key: its window (from its first failure to `ends_at`) and the failures counted
-- in it. A failure at or after `ends_at` starts a new window. Rows of ended windows are
-- removed as failures are noted, a batch at a time, by `ends_at`.

CREATE TABLE failures (
    key          TEXT COLLATE "C" PRIMARY KEY,
    window_start BIGINT NOT NULL,
    ends_at      BIGINT NOT NULL,
    count        BIGINT NOT NULL
);
CREATE INDEX failures_by_end ON failures (ends_at);
