-- Hammer's PostgreSQL store, schema version 2: leases (running as a cluster).
--
-- A lease names a job one replica at a time may do (e.g. `rollout`). `token` grows by one
-- each time another holder takes it; writes made under a lease carry (holder, token) and are
-- refused once the row says otherwise (they lock the row while they check and write). Times
-- are milliseconds since the epoch, from the replicas' clocks (never the database's).

CREATE TABLE leases (
    name       TEXT COLLATE "C" PRIMARY KEY,
    holder     TEXT COLLATE "C" NOT NULL,
    token      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
