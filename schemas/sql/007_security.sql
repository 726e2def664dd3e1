-- Security hardening (issue 10).
--
-- Per-organization daily usage of the paid LLM and embedding APIs, counted
-- atomically before each call (handlers/budget.py): one row per organization,
-- UTC day and kind. A call that would take the day's tokens past the budget
-- is refused and the job fails with that reason.
CREATE TABLE org_daily_usage (
    organization_id text NOT NULL,
    day             date NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('llm', 'embedding')),
    tokens          bigint NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    calls           bigint NOT NULL DEFAULT 0 CHECK (calls >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, day, kind)
);

-- A dead letter the mirror could not store in full (a payload jsonb refuses,
-- NUL characters, a value Postgres rejects) is still stored: its raw bytes and
-- what could be kept, with what was left out and why noted here.
ALTER TABLE worker_dlq ADD COLUMN mirror_note text;
