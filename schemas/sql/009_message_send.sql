-- message.send (issue 13): the send ledger and the per-organization daily
-- count of messages sent.
--
-- One row per idempotency key (handlers/messaging/store.py). A run claims
-- the row ('sending', its claim token, a lease) and commits before it calls
-- Kommo; it records the note id ('sent') after. `unsettled_until` says until
-- when a note posted for this key may still appear in Kommo: it is set before
-- every POST and cleared by a definitive answer. While it is set, nobody
-- posts again before a lookup made after that moment has found nothing.
--
-- No foreign key to crm_connections: the ledger must outlive a connection
-- that is deleted and registered again, or its messages could be sent twice.
CREATE TABLE message_sends (
    idempotency_key   text PRIMARY KEY,
    organization_id   text NOT NULL,
    connection_id     text NOT NULL,
    lead_id           bigint NOT NULL,
    channel           text NOT NULL CHECK (channel IN ('note', 'email')),
    note_type         text NOT NULL,
    fingerprint       text NOT NULL,
    state             text NOT NULL CHECK (state IN ('sending', 'sent', 'failed')),
    job_id            text NOT NULL,
    claim_token       uuid,
    lease_until       timestamptz,
    unsettled_until   timestamptz,
    first_post_at     timestamptz,
    posts             integer NOT NULL DEFAULT 0,
    lookups           integer NOT NULL DEFAULT 0,
    note_id           bigint,
    resolved_by       text CHECK (resolved_by IN ('answer', 'lookup')),
    error             text,
    sent_at           timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (state <> 'sent' OR note_id IS NOT NULL)
);
CREATE INDEX message_sends_unresolved_idx ON message_sends (updated_at)
    WHERE state <> 'sent';

-- Messages sent per organization and UTC day (database clock), incremented in
-- the transaction that marks a ledger row 'sent', so each message counts once.
CREATE TABLE message_usage (
    organization_id text NOT NULL,
    day             date NOT NULL,
    sent            bigint NOT NULL DEFAULT 0 CHECK (sent >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, day)
);
