-- CRM (Kommo): connections with their encrypted secrets and sync status, the
-- synced pipelines, statuses and custom fields, leads and contacts applied
-- from webhooks (last write wins by Kommo's updated_at, deletes kept as
-- tombstones), and each webhook delivery stored once.
--
-- *_enc columns hold AES-256-GCM values 'v1:<key id>:<base64>' written by
-- handlers/crm/crypto.py; the key id lets a new key be added while rows
-- under the old one still decrypt.

CREATE TABLE crm_connections (
    id                  text PRIMARY KEY,
    organization_id     text NOT NULL,
    provider            text NOT NULL DEFAULT 'kommo' CHECK (provider IN ('kommo')),
    base_url            text NOT NULL,
    client_id           text NOT NULL,
    client_secret_enc   text NOT NULL,
    redirect_uri        text NOT NULL,
    access_token_enc    text NOT NULL,
    refresh_token_enc   text NOT NULL,
    access_expires_at   timestamptz NOT NULL,
    tokens_refreshed_at timestamptz,
    webhook_secret_enc  text NOT NULL,
    needs_reauth        boolean NOT NULL DEFAULT false,
    reauth_reason       text,
    sync_state          text NOT NULL DEFAULT 'never'
                        CHECK (sync_state IN ('never', 'running', 'succeeded', 'failed')),
    sync_job_id         text,
    sync_lease_until    timestamptz,
    sync_started_at     timestamptz,
    sync_finished_at    timestamptz,
    sync_error          text,
    sync_pipelines      integer,
    sync_statuses       integer,
    sync_custom_fields  integer,
    sync_removed        integer,
    sync_api_calls      integer,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX crm_connections_org_idx ON crm_connections (organization_id);

CREATE TABLE crm_pipelines (
    connection_id   text NOT NULL REFERENCES crm_connections (id) ON DELETE CASCADE,
    pipeline_id     bigint NOT NULL,
    name            text NOT NULL,
    sort            integer NOT NULL,
    is_main         boolean NOT NULL,
    is_unsorted_on  boolean NOT NULL,
    is_archive      boolean NOT NULL,
    synced_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, pipeline_id)
);

-- Status ids are not unique across pipelines: every pipeline has the system
-- statuses 142 (won) and 143 (lost).
CREATE TABLE crm_pipeline_statuses (
    connection_id   text NOT NULL,
    pipeline_id     bigint NOT NULL,
    status_id       bigint NOT NULL,
    name            text NOT NULL,
    sort            integer NOT NULL,
    color           text,
    type            smallint NOT NULL,
    is_editable     boolean NOT NULL,
    synced_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, pipeline_id, status_id),
    FOREIGN KEY (connection_id, pipeline_id)
        REFERENCES crm_pipelines (connection_id, pipeline_id) ON DELETE CASCADE
);

CREATE TABLE crm_custom_fields (
    connection_id   text NOT NULL REFERENCES crm_connections (id) ON DELETE CASCADE,
    entity_type     text NOT NULL CHECK (entity_type IN ('leads', 'contacts', 'companies')),
    field_id        bigint NOT NULL,
    name            text NOT NULL,
    code            text,
    type            text NOT NULL,
    sort            integer NOT NULL,
    is_api_only     boolean NOT NULL,
    group_id        text,
    enums           jsonb,
    synced_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, entity_type, field_id)
);

CREATE TABLE crm_leads (
    connection_id       text NOT NULL REFERENCES crm_connections (id) ON DELETE CASCADE,
    lead_id             bigint NOT NULL,
    name                text,
    status_id           bigint,
    pipeline_id         bigint,
    price               numeric,
    responsible_user_id bigint,
    kommo_updated_at    timestamptz NOT NULL,
    deleted             boolean NOT NULL DEFAULT false,
    fields              jsonb NOT NULL DEFAULT '{}'::jsonb,
    event_id            text NOT NULL,
    applied_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, lead_id)
);

CREATE TABLE crm_contacts (
    connection_id       text NOT NULL REFERENCES crm_connections (id) ON DELETE CASCADE,
    contact_id          bigint NOT NULL,
    name                text,
    responsible_user_id bigint,
    kommo_updated_at    timestamptz NOT NULL,
    deleted             boolean NOT NULL DEFAULT false,
    fields              jsonb NOT NULL DEFAULT '{}'::jsonb,
    event_id            text NOT NULL,
    applied_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, contact_id)
);

CREATE TABLE crm_webhook_events (
    id              bigserial PRIMARY KEY,
    connection_id   text NOT NULL REFERENCES crm_connections (id) ON DELETE CASCADE,
    event_id        text NOT NULL,
    job_id          text NOT NULL,
    body            text NOT NULL,
    events          jsonb NOT NULL,
    applied         integer NOT NULL DEFAULT 0,
    stale           integer NOT NULL DEFAULT 0,
    unknown_kinds   text[] NOT NULL DEFAULT '{}',
    received_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (connection_id, event_id)
);
