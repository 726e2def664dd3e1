-- knowledge_graph.extract keeps each batch's validated LLM answer until the
-- job's graph is saved, so a job that is retried or redelivered (timeout,
-- drain, crash, replay) resumes where it stopped instead of paying for the
-- same LLM calls again. batch_hash guards against chunks that changed since.
CREATE TABLE kg_batch_results (
    job_id      text NOT NULL,
    batch_index integer NOT NULL,
    batch_hash  text NOT NULL,
    extraction  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, batch_index)
);

CREATE INDEX kg_batch_results_created_idx ON kg_batch_results (created_at);
