-- State of the CDC reader's snapshots (one row per replication slot), so that a snapshot
-- interrupted by a crash resumes where its last acknowledged chunk ended.

CREATE TABLE cdc_snapshots (
    slot_name         text PRIMARY KEY,
    -- LSN from which the slot streams: the snapshot shows the database as of this point.
    consistent_point  text NOT NULL,
    -- Last key emitted and acknowledged, per table: {"forms": id, "questions": id,
    -- "responses": [form_id, id]}.
    progress          jsonb NOT NULL DEFAULT '{}',
    rows_done         bigint NOT NULL DEFAULT 0,
    rows_estimate     bigint,
    started_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz
);
