-- Leases: per-task downstream credentials (a PostgreSQL role, an SSH certificate, a JWT for an
-- API), from minting to revocation. At most one open lease per task and credential.
CREATE TABLE leases (
    id          TEXT PRIMARY KEY,
    task_id     TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    credential  TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE UNIQUE INDEX leases_open_per_task ON leases (task_id, credential)
    WHERE state IN ('pending', 'live');
CREATE INDEX leases_state ON leases (state);
CREATE INDEX leases_agent ON leases (agent_id, created_at);
