-- The W3C traceparent of the request that wrote each revision of a response (NULL when the
-- API was not tracing), so that the trace survives the database: the CDC reader puts it in a
-- `traceparent` header on the response's Kafka record. A nullable column without a default
-- or a constraint: adding it rewrites and scans nothing, so it is safe while the API runs.
ALTER TABLE responses ADD COLUMN trace_context text;
