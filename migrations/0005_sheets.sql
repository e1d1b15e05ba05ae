-- State of the Google Sheets connector: where each response's row is, which column each
-- question has, the tabs in use. A row is fixed the first time its response is seen and
-- stored here before any write, so a replay rewrites the same cells and never adds a row.

CREATE TABLE sheets_state (
    integration_id  uuid PRIMARY KEY,
    spreadsheet_id  text NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sheets_tabs (
    integration_id  uuid NOT NULL,
    tab_index       integer NOT NULL,
    sheet_id        bigint NOT NULL,
    title           text NOT NULL,
    -- The next free row (0-based; row 0 holds the header).
    next_row        integer NOT NULL DEFAULT 1,
    PRIMARY KEY (integration_id, tab_index)
);

CREATE TABLE sheets_columns (
    integration_id  uuid NOT NULL,
    question_id     uuid NOT NULL,
    -- 0-based column; the first columns hold the response's own fields.
    column_index    integer NOT NULL,
    label           text NOT NULL,
    PRIMARY KEY (integration_id, question_id),
    UNIQUE (integration_id, column_index)
);

CREATE TABLE sheets_rows (
    integration_id  uuid NOT NULL,
    response_id     uuid NOT NULL,
    tab_index       integer NOT NULL,
    row_index       integer NOT NULL,
    -- Highest revision written to the row.
    revision        integer NOT NULL DEFAULT 0,
    PRIMARY KEY (integration_id, response_id),
    UNIQUE (integration_id, tab_index, row_index)
);
