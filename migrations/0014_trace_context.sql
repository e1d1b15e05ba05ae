-- The W3C traceparent of the request that wrote each revision of a response (NULL when the
-- API was not tracing), so that the trace survives the database: the CDC reader puts it in a
-- `traceparent` header on the response's Kafka record. A nullable column without a default
-- or a constraint: adding it rewrites and scans nothing. It still takes an ACCESS EXCLUSIVE
-- lock on `responses` and its partitions for an instant; waiting for it behind a long
-- transaction would queue every API request behind the migration, so it gives up after 5 s
-- instead (run `collect migrate` again).
SET LOCAL lock_timeout = '5s';
ALTER TABLE responses ADD COLUMN trace_context text;
