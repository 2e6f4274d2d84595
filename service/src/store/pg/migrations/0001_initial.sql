-- Hammer's PostgreSQL store, schema version 1.
--
-- Keys are TEXT COLLATE "C": byte order, as the sled store orders them.
-- A record is kept whole as JSON in `rec` (the same serde form the sled store writes); the
-- columns beside it are what the store looks records up by, orders by or prunes by.
-- A device's epoch and seq are u64: they are stored as BIGINT shifted by 2^63
-- (value XOR 1<<63), which keeps their order. Times are milliseconds since the epoch.

CREATE TABLE users (
    id   TEXT COLLATE "C" PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    rec  JSONB NOT NULL
);

CREATE TABLE tokens (
    hash    TEXT COLLATE "C" PRIMARY KEY,
    user_id TEXT COLLATE "C" NOT NULL,
    id      TEXT COLLATE "C" NOT NULL,
    rec     JSONB NOT NULL
);
CREATE INDEX tokens_by_user ON tokens (user_id, id);

CREATE TABLE devices (
    id      TEXT COLLATE "C" PRIMARY KEY,
    owner   TEXT COLLATE "C" NOT NULL,
    name    TEXT COLLATE "C" NOT NULL,
    -- Bumped by every update: an update applies only to the version it read.
    version BIGINT NOT NULL DEFAULT 0,
    rec     JSONB NOT NULL,
    UNIQUE (owner, name)
);

CREATE TABLE enrollments (
    token_hash TEXT COLLATE "C" PRIMARY KEY,
    device_id  TEXT COLLATE "C" NOT NULL,
    rec        JSONB NOT NULL
);
CREATE INDEX enrollments_by_device ON enrollments (device_id);

CREATE TABLE deployments (
    id          TEXT COLLATE "C" PRIMARY KEY,
    owner       TEXT COLLATE "C" NOT NULL,
    created_at  BIGINT NOT NULL,
    finished_at BIGINT,
    running     BOOLEAN NOT NULL,
    rec         JSONB NOT NULL
);
CREATE INDEX deployments_by_owner ON deployments (owner, created_at, id);

-- Status events, stored once per (device, epoch, seq); `ord` is the order of storing (the
-- history's pages and the oldest-first pruning).
CREATE TABLE status_events (
    ord         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   TEXT COLLATE "C" NOT NULL,
    epoch       BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    size        BIGINT NOT NULL,
    rec         JSONB NOT NULL,
    UNIQUE (device_id, epoch, seq)
);
CREATE INDEX status_events_by_device ON status_events (device_id, ord);

-- Per device: its current epoch (NULL before its first event) and the count and bytes of its
-- stored events. An insert locks this row first, so one device's inserts run one at a time
-- in every process.
CREATE TABLE status_heads (
    device_id TEXT COLLATE "C" PRIMARY KEY,
    epoch     BIGINT,
    count     BIGINT NOT NULL DEFAULT 0,
    bytes     BIGINT NOT NULL DEFAULT 0
);

-- Per device and epoch: the highest seq stored with no gap before it (shifted like seq).
CREATE TABLE status_contig (
    device_id  TEXT COLLATE "C" NOT NULL,
    epoch      BIGINT NOT NULL,
    contiguous BIGINT NOT NULL,
    PRIMARY KEY (device_id, epoch)
);
