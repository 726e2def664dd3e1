-- Conveyor's initial schema: assets, chunks, knowledge graph, dead letters,
-- and the idempotency ledger.

CREATE TABLE assets (
    id              text PRIMARY KEY,
    organization_id text NOT NULL,
    source_url      text NOT NULL,
    mime_type       text NOT NULL,
    filename        text,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    error           text,
    chunks_count    integer,
    progress        smallint CHECK (progress BETWEEN 0 AND 100),
    processed_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assets_org_idx ON assets (organization_id);
CREATE INDEX assets_status_idx ON assets (status);

CREATE TABLE asset_chunks (
    asset_id        text NOT NULL REFERENCES assets (id) ON DELETE CASCADE,
    chunk_index     integer NOT NULL,
    organization_id text NOT NULL,
    content         text NOT NULL,
    page_start      integer,
    page_end        integer,
    char_start      integer NOT NULL,
    char_end        integer NOT NULL,
    embedding       real[] NOT NULL,
    embedding_model text NOT NULL,
    embedding_dims  integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (asset_id, chunk_index)
);

CREATE TABLE kg_entities (
    id              bigserial PRIMARY KEY,
    organization_id text NOT NULL,
    type            text NOT NULL,
    name            text NOT NULL,
    normalized_name text NOT NULL,
    value           text,
    confidence      real,
    source_asset_id text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, type, normalized_name)
);

CREATE TABLE kg_relationships (
    id              bigserial PRIMARY KEY,
    organization_id text NOT NULL,
    source_id       bigint NOT NULL REFERENCES kg_entities (id) ON DELETE CASCADE,
    target_id       bigint NOT NULL REFERENCES kg_entities (id) ON DELETE CASCADE,
    type            text NOT NULL,
    confidence      real,
    source_asset_id text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_id, target_id, type)
);

CREATE TABLE worker_dlq (
    id                  bigserial PRIMARY KEY,
    dlq_topic           text NOT NULL,
    dlq_partition       integer NOT NULL,
    dlq_offset          bigint NOT NULL,
    original_topic      text,
    original_partition  integer,
    original_offset     bigint,
    original_timestamp  timestamptz,
    consumer_group      text,
    job_type            text,
    job_id              text,
    attempts            integer,
    first_failure_at    timestamptz,
    last_failure_at     timestamptz,
    error_class         text,
    error_message       text,
    error_stack         text,
    stage               text,
    service_version     text,
    host                text,
    raw_key             bytea,
    raw_value           bytea,
    headers             jsonb NOT NULL DEFAULT '{}'::jsonb,
    payload             jsonb,
    status              text NOT NULL DEFAULT 'new'
                        CHECK (status IN ('new', 'replayed', 'resolved')),
    resolution_note     text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (dlq_topic, dlq_partition, dlq_offset)
);
CREATE INDEX worker_dlq_status_idx ON worker_dlq (status);
CREATE INDEX worker_dlq_job_idx ON worker_dlq (job_type, job_id);

CREATE TABLE processed_jobs (
    job_id      text PRIMARY KEY,
    job_type    text NOT NULL,
    outcome     text NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now()
);
