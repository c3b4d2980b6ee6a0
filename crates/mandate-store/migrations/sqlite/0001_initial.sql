-- Owners, agents, tasks, API tokens, used assertion ids and the audit chain.
-- Times are milliseconds since the Unix epoch. Rows that the broker reads whole keep their full
-- JSON in `body`; the other columns exist to be queried and indexed.

CREATE TABLE owners (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'owner')),
    owner_id    TEXT,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);
CREATE INDEX api_tokens_owner ON api_tokens (owner_id);

CREATE TABLE agents (
    id          TEXT PRIMARY KEY,
    owner_id    TEXT,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX agents_owner ON agents (owner_id);

CREATE TABLE tasks (
    id          TEXT PRIMARY KEY,
    agent_id    TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    body        TEXT NOT NULL
);
CREATE INDEX tasks_state ON tasks (state, expires_at);
CREATE INDEX tasks_agent ON tasks (agent_id, created_at);

CREATE TABLE used_jti (
    key         TEXT PRIMARY KEY,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX used_jti_expiry ON used_jti (expires_at);

CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    time        INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    task_id     TEXT,
    agent_id    TEXT,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    event       TEXT NOT NULL
);
CREATE INDEX audit_task ON audit_log (task_id, seq);
CREATE INDEX audit_agent ON audit_log (agent_id, seq);

CREATE TABLE audit_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         INTEGER NOT NULL,
    hash        TEXT NOT NULL
);

CREATE TABLE meta (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
