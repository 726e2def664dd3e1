-- Effects of the diagnostic `probe` job type: reliability tests count rows
-- here to prove "exactly once" (no unique key on purpose).

CREATE TABLE probe_effects (
    id          bigserial PRIMARY KEY,
    job_id      text NOT NULL,
    attempt     integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX probe_effects_job_idx ON probe_effects (job_id);
