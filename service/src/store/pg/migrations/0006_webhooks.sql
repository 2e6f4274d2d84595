-- Hammer's PostgreSQL store, schema version 6: webhooks and their deliveries.
--
-- `webhooks`: one row per webhook of a user (`owner`), the record whole in `rec` (its signing
-- secret included: it is needed in clear to sign).
-- `deliveries`: the durable outbox and the delivery log. `ord` is the order of enqueueing;
-- `pending` rows are the queue (a webhook's are sent one at a time, oldest first), the others
-- its log. `next_at` is when a pending one is due, `claimed_until` until when a worker of some
-- replica holds it (0: nobody). A webhook's removal removes its deliveries.

CREATE TABLE webhooks (
    id         TEXT PRIMARY KEY,
    owner      TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    rec        JSONB NOT NULL
);
CREATE INDEX webhooks_by_owner ON webhooks (owner, created_at);

CREATE TABLE deliveries (
    ord           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    webhook_id    TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    owner         TEXT COLLATE "C" NOT NULL,
    pending       BOOLEAN NOT NULL,
    next_at       BIGINT NOT NULL,
    claimed_until BIGINT NOT NULL DEFAULT 0,
    rec           JSONB NOT NULL
);
CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id, ord);
CREATE INDEX deliveries_queue ON deliveries (webhook_id, ord) WHERE pending;
CREATE INDEX deliveries_pending_of ON deliveries (owner, ord) WHERE pending;
