-- The crash-loop guard (streams/crashguard.py): which records may have been
-- running when a worker died, and how many deaths each was a suspect of.

-- One row per partition of a guarded job type. Its owner (one worker
-- process) writes, before any record runs, how far records of the partition
-- may be running (`reserved_to`), or the one record it runs alone
-- (`isolated_offset`). A clean revoke or shutdown sets both to NULL. A row
-- found with either set when a worker is assigned the partition means its
-- previous owner died: the records from the committed offset up to
-- `reserved_to` (or just `isolated_offset`) may have killed it.
CREATE TABLE job_journal (
    group_id        text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    owner           text        NOT NULL,
    reserved_to     bigint,
    isolated_offset bigint,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- Records that were (possibly) running when a worker died, with the number
-- of such deaths. A suspect runs alone, so a death while it runs is its
-- own; past `max_crashes` it is dead-lettered without running. Rows below a
-- partition's committed offset are done with and deleted by the next claim.
CREATE TABLE job_crashes (
    group_id      text        NOT NULL,
    topic         text        NOT NULL,
    partition     integer     NOT NULL,
    record_offset bigint      NOT NULL,
    crashes       integer     NOT NULL,
    last_crash_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition, record_offset)
);

-- A worker is assigned partitions starting at `p_starts` (their committed
-- offsets) and ending at `p_ends` (their logs' ends now): count the deaths
-- its predecessors left behind, take ownership, and return every suspect
-- from the start on with its count. A reservation past the log's end names
-- records that did not exist yet: they are not suspects.
CREATE FUNCTION job_journal_claim(
    p_group      text,
    p_owner      text,
    p_topics     text[],
    p_partitions integer[],
    p_starts     bigint[],
    p_ends       bigint[]
) RETURNS TABLE (out_topic text, out_partition integer, out_offset bigint, out_crashes integer)
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_crashes AS c
     USING unnest(p_topics, p_partitions, p_starts) AS a(t, p, s)
     WHERE c.group_id = p_group AND c.topic = a.t AND c.partition = a.p
       AND c.record_offset < a.s;

    WITH left_behind AS (
        SELECT j.topic, j.partition, j.reserved_to, j.isolated_offset, a.s, a.e
          FROM job_journal AS j
          JOIN unnest(p_topics, p_partitions, p_starts, p_ends) AS a(t, p, s, e)
            ON j.group_id = p_group AND j.topic = a.t AND j.partition = a.p
         WHERE j.reserved_to IS NOT NULL OR j.isolated_offset IS NOT NULL
           FOR UPDATE OF j
    ), suspects AS (
        SELECT l.topic, l.partition, o.o
          FROM left_behind AS l, generate_series(l.s, LEAST(l.reserved_to, l.e - 1)) AS o(o)
         WHERE l.isolated_offset IS NULL
        UNION ALL
        SELECT l.topic, l.partition, l.isolated_offset
          FROM left_behind AS l
         WHERE l.isolated_offset IS NOT NULL AND l.isolated_offset >= l.s
    )
    INSERT INTO job_crashes AS c (group_id, topic, partition, record_offset, crashes)
    SELECT p_group, s.topic, s.partition, s.o, 1 FROM suspects AS s
    ON CONFLICT (group_id, topic, partition, record_offset)
    DO UPDATE SET crashes = c.crashes + 1, last_crash_at = now();

    INSERT INTO job_journal AS j (group_id, topic, partition, owner)
    SELECT p_group, a.t, a.p, p_owner FROM unnest(p_topics, p_partitions) AS a(t, p)
    ON CONFLICT (group_id, topic, partition)
    DO UPDATE SET owner = EXCLUDED.owner, reserved_to = NULL, isolated_offset = NULL,
                  updated_at = now();

    RETURN QUERY
    SELECT c.topic, c.partition, c.record_offset, c.crashes
      FROM job_crashes AS c
      JOIN unnest(p_topics, p_partitions, p_starts) AS a(t, p, s)
        ON c.group_id = p_group AND c.topic = a.t AND c.partition = a.p
       AND c.record_offset >= a.s;
END
$$;
