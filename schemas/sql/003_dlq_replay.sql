-- `conveyor dlq replay` republishes a dead letter to its original topic and
-- records it here; `conveyor dlq resolve` closes a dead letter with a note.
ALTER TABLE worker_dlq
    ADD COLUMN replay_count integer NOT NULL DEFAULT 0,
    ADD COLUMN replayed_at  timestamptz;

CREATE INDEX worker_dlq_topic_status_idx ON worker_dlq (dlq_topic, status, id);
