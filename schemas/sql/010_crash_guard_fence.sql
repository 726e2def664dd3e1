-- The crash-loop guard, second version (streams/crashguard.py, docs/RELIABILITY.md "Crash loops").
--
-- 1. Claims are fenced by the Kafka generation that made them: a claim from an
--    older generation (delayed by a database outage across a rebalance) never
--    takes a partition from the owner a newer generation gave it to.
-- 2. A death blames the records that may have been running beside others only up
--    to `p_caps` deaths (max_crashes - 1 of the partition's job type). Only a
--    death while a record ran alone (`isolated_offset`) can take it past that, so
--    a job is dead-lettered `crashed` only after a death of its own, and a healthy
--    neighbour of a poison job never is.
--
-- The function of migration 006 stays for workers of the previous version during
-- a rolling deploy; this version's workers call job_journal_claim_fenced.

ALTER TABLE job_journal ADD COLUMN generation integer NOT NULL DEFAULT -1;

CREATE FUNCTION job_journal_claim_fenced(
    p_group      text,
    p_owner      text,
    p_generation integer,
    p_topics     text[],
    p_partitions integer[],
    p_starts     bigint[],
    p_ends       bigint[],
    p_caps       integer[]
) RETURNS TABLE (out_topic text, out_partition integer, out_offset bigint, out_crashes integer)
LANGUAGE plpgsql AS $$
DECLARE
    c_t text[]; c_p integer[]; c_s bigint[]; c_e bigint[]; c_c integer[];
    c_r bigint[]; c_i bigint[];
BEGIN
    -- The partitions' rows, created if missing and locked. A row that a newer
    -- generation holds is left alone: its partition is not claimed nor returned.
    INSERT INTO job_journal (group_id, topic, partition, owner, generation)
    SELECT p_group, a.t, a.p, '', -1 FROM unnest(p_topics, p_partitions) AS a(t, p)
    ON CONFLICT (group_id, topic, partition) DO NOTHING;
    PERFORM 1 FROM job_journal AS j
      JOIN unnest(p_topics, p_partitions) AS a(t, p)
        ON j.group_id = p_group AND j.topic = a.t AND j.partition = a.p
       FOR UPDATE OF j;

    SELECT array_agg(j.topic), array_agg(j.partition), array_agg(a.s), array_agg(a.e),
           array_agg(a.c), array_agg(j.reserved_to), array_agg(j.isolated_offset)
      INTO c_t, c_p, c_s, c_e, c_c, c_r, c_i
      FROM job_journal AS j
      JOIN unnest(p_topics, p_partitions, p_starts, p_ends, p_caps) AS a(t, p, s, e, c)
        ON j.group_id = p_group AND j.topic = a.t AND j.partition = a.p
     WHERE j.generation <= p_generation;
    IF c_t IS NULL THEN
        RETURN;
    END IF;

    -- Counts below where the partition starts now are done with.
    DELETE FROM job_crashes AS c
     USING unnest(c_t, c_p, c_s) AS l(t, p, s)
     WHERE c.group_id = p_group AND c.topic = l.t AND c.partition = l.p AND c.record_offset < l.s;

    -- Records that may have been running beside others: one more death, up to
    -- the cap (a count already past it stays where it is).
    UPDATE job_crashes AS c
       SET crashes = GREATEST(c.crashes, LEAST(c.crashes + 1, l.c)), last_crash_at = now()
      FROM unnest(c_t, c_p, c_s, c_e, c_c, c_r, c_i) AS l(t, p, s, e, c, r, i)
     WHERE l.r IS NOT NULL AND l.i IS NULL
       AND c.group_id = p_group AND c.topic = l.t AND c.partition = l.p
       AND c.record_offset BETWEEN l.s AND LEAST(l.r, l.e - 1);
    INSERT INTO job_crashes (group_id, topic, partition, record_offset, crashes)
    SELECT p_group, l.t, l.p, o.o, 1
      FROM unnest(c_t, c_p, c_s, c_e, c_c, c_r, c_i) AS l(t, p, s, e, c, r, i),
           generate_series(l.s, LEAST(l.r, l.e - 1)) AS o(o)
     WHERE l.r IS NOT NULL AND l.i IS NULL AND l.c > 0
    ON CONFLICT (group_id, topic, partition, record_offset) DO NOTHING;

    -- The record that ran alone: the death is its own.
    INSERT INTO job_crashes AS c (group_id, topic, partition, record_offset, crashes)
    SELECT p_group, l.t, l.p, l.i, 1
      FROM unnest(c_t, c_p, c_s, c_i) AS l(t, p, s, i)
     WHERE l.i IS NOT NULL AND l.i >= l.s
    ON CONFLICT (group_id, topic, partition, record_offset)
    DO UPDATE SET crashes = c.crashes + 1, last_crash_at = now();

    UPDATE job_journal AS j
       SET owner = p_owner, generation = p_generation, reserved_to = NULL,
           isolated_offset = NULL, updated_at = now()
      FROM unnest(c_t, c_p) AS l(t, p)
     WHERE j.group_id = p_group AND j.topic = l.t AND j.partition = l.p;

    -- One row per partition claimed (offset NULL), then every suspect from its start on.
    RETURN QUERY
    SELECT l.t, l.p, NULL::bigint, NULL::integer FROM unnest(c_t, c_p) AS l(t, p)
    UNION ALL
    SELECT c.topic, c.partition, c.record_offset, c.crashes
      FROM job_crashes AS c
      JOIN unnest(c_t, c_p, c_s) AS l(t, p, s)
        ON c.group_id = p_group AND c.topic = l.t AND c.partition = l.p
       AND c.record_offset >= l.s;
END
$$;
