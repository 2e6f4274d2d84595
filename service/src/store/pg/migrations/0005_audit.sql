-- Hammer's PostgreSQL store, schema version 5: the audit log.
--
-- One row per record, in its user's log (`owner`). `ord` is the order of appending: a page
-- reads a user's records by (owner, ord), newest first, and retention removes a user's
-- oldest ones (beyond the count or older than the age bound), a batch per append.

CREATE TABLE audit (
    ord   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner TEXT COLLATE "C" NOT NULL,
    time  BIGINT NOT NULL,
    rec   JSONB NOT NULL
);
CREATE INDEX audit_by_owner ON audit (owner, ord);
