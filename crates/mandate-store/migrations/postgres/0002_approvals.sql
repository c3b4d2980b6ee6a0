-- Approval requests: a person's single-use yes or no for one exact call.
CREATE TABLE approvals (
    id          TEXT COLLATE "C" PRIMARY KEY,
    task_id     TEXT NOT NULL,
    owner_id    TEXT,
    state       TEXT NOT NULL,
    call_hash   TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX approvals_task ON approvals (task_id, call_hash);
CREATE INDEX approvals_state ON approvals (state, created_at);
