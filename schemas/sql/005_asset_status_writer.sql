-- Which job wrote an asset's status, so that status only moves forward: a
-- stale copy of a job (or an older job) never writes `processing` over the
-- `completed` or `failed` its own or a newer job wrote (handlers/assets/store.py).
ALTER TABLE assets
    ADD COLUMN status_job_id         text,
    ADD COLUMN status_job_origin     text,
    ADD COLUMN status_job_created_at timestamptz;
