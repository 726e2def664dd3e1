-- A record dead-lettered again (its worker died after the dead letter was sent
-- but before the source offset was committed, so the next owner ran it again)
-- is mirrored as `resolved`, "repeat of dead letter N": the mirror finds the
-- first dead letter of the same source record (topic, partition, offset,
-- consumer group) by this index.
CREATE INDEX worker_dlq_original_idx
    ON worker_dlq (dlq_topic, original_topic, original_partition, original_offset);
