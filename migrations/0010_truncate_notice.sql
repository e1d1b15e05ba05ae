-- TRUNCATE is never silent. With publish_via_partition_root, Postgres publishes no TRUNCATE of
-- a single partition ("Replicated" note of CREATE PUBLICATION: TRUNCATE of a partition is not
-- replicated when publishing via the root). A statement-level trigger on the responses table
-- and on each of its partitions emits a transactional logical message in the TRUNCATE's own
-- transaction; the CDC reader sees it in the stream, in commit order, and reports it (dead
-- letter, metric, `collect status`). The reader installs the trigger on partitions added later.
CREATE FUNCTION collect_truncate_notice() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_logical_emit_message(
        true,
        'collect.truncate',
        json_build_object('schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME)::text
    );
    RETURN NULL;
END
$$;

DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN
        SELECT 'responses'::regclass
        UNION ALL
        SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'responses'::regclass
    LOOP
        EXECUTE format('CREATE TRIGGER collect_truncate_notice BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION collect_truncate_notice()', t);
    END LOOP;
END $$;
