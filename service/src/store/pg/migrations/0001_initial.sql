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

-- Stores one status event (the store's `insert_status`, in one round trip): once per
-- (device, epoch, seq), advancing the contiguous position, then removing the device's oldest
-- events while it is over a bound (at most `p_batch` of them; the newest always stays).
-- The device's `status_heads` row is locked first, so one device's inserts run one at a time
-- in every process and its counts stay exact. Answers whether the event is new and the
-- contiguous position (both shifted like seq).
CREATE FUNCTION hammer_insert_status(
    p_device      TEXT,
    p_epoch       BIGINT,
    p_seq         BIGINT,
    p_received_at BIGINT,
    p_size        BIGINT,
    p_rec         JSONB,
    p_max_events  BIGINT,
    p_max_bytes   BIGINT,
    p_oldest_kept BIGINT,
    p_batch       INTEGER,
    OUT o_new        BOOLEAN,
    OUT o_contiguous BIGINT
) LANGUAGE plpgsql AS $$
DECLARE
    v_count BIGINT;
    v_bytes BIGINT;
    v_start BIGINT;
    v_upto  BIGINT;
    v_rows  INTEGER;
    r       RECORD;
BEGIN
    INSERT INTO status_heads (device_id) VALUES (p_device) ON CONFLICT DO NOTHING;
    SELECT h.count, h.bytes INTO v_count, v_bytes
        FROM status_heads h WHERE h.device_id = p_device FOR UPDATE;
    SELECT c.contiguous INTO v_start
        FROM status_contig c WHERE c.device_id = p_device AND c.epoch = p_epoch;
    v_start := COALESCE(v_start, -9223372036854775808);  -- seq 0, shifted
    IF p_seq <= v_start THEN
        -- Stored before (and maybe pruned since): a resend, not a new event.
        o_new := false;
        o_contiguous := v_start;
        RETURN;
    END IF;
    INSERT INTO status_events (device_id, epoch, seq, received_at, size, rec)
        VALUES (p_device, p_epoch, p_seq, p_received_at, p_size, p_rec)
        ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    o_new := v_rows = 1;
    -- The longest run of seqs after v_start with no gap: the rows where seq - row_number()
    -- is still v_start (the shift is a constant, so differences are those of the seqs).
    SELECT COALESCE(MAX(s.seq), v_start) INTO o_contiguous FROM (
        SELECT e.seq, e.seq - ROW_NUMBER() OVER (ORDER BY e.seq) AS base
        FROM status_events e
        WHERE e.device_id = p_device AND e.epoch = p_epoch AND e.seq > v_start
    ) s WHERE s.base = v_start;
    IF o_contiguous <> v_start THEN
        INSERT INTO status_contig AS c (device_id, epoch, contiguous)
            VALUES (p_device, p_epoch, o_contiguous)
            ON CONFLICT (device_id, epoch)
            DO UPDATE SET contiguous = GREATEST(c.contiguous, EXCLUDED.contiguous);
    END IF;
    IF o_new THEN
        v_count := v_count + 1;
        v_bytes := v_bytes + p_size;
        FOR r IN SELECT e.ord, e.size, e.received_at FROM status_events e
                 WHERE e.device_id = p_device ORDER BY e.ord LIMIT p_batch LOOP
            EXIT WHEN v_count <= 1 OR NOT (v_count > p_max_events OR v_bytes > p_max_bytes
                                           OR r.received_at < p_oldest_kept);
            v_count := v_count - 1;
            v_bytes := v_bytes - r.size;
            v_upto := r.ord;
        END LOOP;
        IF v_upto IS NOT NULL THEN
            DELETE FROM status_events e WHERE e.device_id = p_device AND e.ord <= v_upto;
        END IF;
        UPDATE status_heads h SET epoch = p_epoch, count = v_count, bytes = v_bytes
            WHERE h.device_id = p_device;
    END IF;
END
$$;
