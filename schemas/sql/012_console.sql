-- The operations console (conveyor console, docs/CONSOLE.md): every action it
-- takes (logins, replays, resolves, purges, pauses) is written here, and the
-- console shows it. Rows are only ever inserted.
CREATE TABLE console_audit (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    role        text NOT NULL,
    auth        text NOT NULL CHECK (auth IN ('token', 'proxy', 'none')),
    address     text,
    action      text NOT NULL,
    target      text,
    row_count   integer,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX console_audit_at_idx ON console_audit (id DESC);

-- The dead-letter list filters (newest first) and "find a job" look dead letters
-- up by job type, stage, organization, error class, time, job id, asset id,
-- idempotency key and key; the fleet page counts the last hour's per job type.
CREATE INDEX worker_dlq_topic_id_idx ON worker_dlq (dlq_topic, id);
CREATE INDEX worker_dlq_type_idx ON worker_dlq (dlq_topic, job_type, id);
CREATE INDEX worker_dlq_stage_idx ON worker_dlq (dlq_topic, stage, id);
CREATE INDEX worker_dlq_org_idx ON worker_dlq (dlq_topic, (payload->>'organization_id'), id);
CREATE INDEX worker_dlq_error_class_idx ON worker_dlq (dlq_topic, error_class, id);
CREATE INDEX worker_dlq_created_idx ON worker_dlq (dlq_topic, created_at) INCLUDE (job_type);
CREATE INDEX worker_dlq_job_id_idx ON worker_dlq (job_id);
CREATE INDEX worker_dlq_asset_idx ON worker_dlq ((payload->'payload'->>'asset_id'));
CREATE INDEX worker_dlq_idempotency_idx ON worker_dlq ((payload->'payload'->>'idempotency_key'));
CREATE INDEX worker_dlq_key_idx ON worker_dlq (raw_key) WHERE octet_length(raw_key) <= 512;

-- Assets stuck in processing, oldest first.
CREATE INDEX assets_processing_idx ON assets (updated_at) WHERE status = 'processing';
