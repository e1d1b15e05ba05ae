-- Rate limits shared by every `collect connect` process (GCRA: one theoretical arrival time
-- per key, such as a Google user or project, or an SMS sender). Unlogged: a permit needs no
-- WAL and no replica, and losing the table in a crash only lets one burst through.
CREATE UNLOGGED TABLE rate_limits (
    key  text PRIMARY KEY CHECK (length(key) <= 300),
    tat  timestamptz NOT NULL
);
