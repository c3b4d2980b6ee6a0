-- Owners, agents, tasks, API tokens, used assertion ids and the audit chain: the same tables as
-- the SQLite schema. Times are milliseconds since the Unix epoch (BIGINT). Bodies are TEXT so
-- they read back byte for byte. Keys that reads sort by use the "C" collation, which orders like
-- SQLite (by bytes) whatever the database's locale.

CREATE TABLE owners (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id          TEXT COLLATE "C" PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'owner')),
    owner_id    TEXT,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);
CREATE INDEX api_tokens_owner ON api_tokens (owner_id);

CREATE TABLE agents (
    id          TEXT COLLATE "C" PRIMARY KEY,
    owner_id    TEXT,
    status      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX agents_owner ON agents (owner_id);

CREATE TABLE tasks (
    id          TEXT COLLATE "C" PRIMARY KEY,
    agent_id    TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    body        TEXT NOT NULL
);
CREATE INDEX tasks_state ON tasks (state, expires_at);
CREATE INDEX tasks_agent ON tasks (agent_id, created_at);

CREATE TABLE used_jti (
    key         TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX used_jti_expiry ON used_jti (expires_at);

CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY,
    time        BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    task_id     TEXT,
    agent_id    TEXT,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    event       TEXT NOT NULL
);
CREATE INDEX audit_task ON audit_log (task_id, seq);
CREATE INDEX audit_agent ON audit_log (agent_id, seq);

-- The chain head. Its one row exists from the start (seq 0 is "no events yet") so that every
-- writer, in whichever process, can lock it before linking events.
CREATE TABLE audit_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         BIGINT NOT NULL,
    hash        TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE meta (
    key         TEXT COLLATE "C" PRIMARY KEY,
    value       TEXT NOT NULL
);
