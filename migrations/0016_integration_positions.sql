-- Each integration's position in the event topics: per partition it reads, the next offset
-- it has not made durable, skipped or dead-lettered. Its worker stores them after each
-- batch (fenced by the lease generation); `collect replay` moves them back. They replace the
-- committed offsets of one Kafka consumer group per integration, which took one Kafka client
-- per integration in every `collect connect` process (a worker with no row here takes its
-- group's committed offsets once).
SET LOCAL lock_timeout = '5s';
CREATE TABLE integration_positions (
    integration_id  uuid NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    topic           text NOT NULL,
    kafka_partition integer NOT NULL CHECK (kafka_partition >= 0),
    next_offset     bigint NOT NULL CHECK (next_offset >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration_id, topic, kafka_partition)
);
