-- Collect core schema: organizations, API keys, forms, questions, responses, answers.
-- Design notes (the reasons behind partitioning, replica identity and the response document)
-- are in migrations/README.md.

CREATE TABLE organizations (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- API keys are random 256-bit tokens, so a fast SHA-256 digest is enough: they cannot be
-- brute-forced the way passwords can. Only the digest and a display prefix are stored.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    key_sha256  bytea NOT NULL UNIQUE CHECK (length(key_sha256) = 32),
    prefix      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_org_idx ON api_keys (org_id);

CREATE TABLE forms (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES organizations (id),
    title       text NOT NULL,
    description text,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed', 'archived')),
    -- Bumped in the same transaction as any change to the form or its questions; the API
    -- validates submissions against a cached definition guarded by this number.
    version     integer NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
-- Keyset pagination of an organization's forms (ids are UUIDv7, so ordered by creation).
CREATE INDEX forms_org_idx ON forms (org_id, id) WHERE deleted_at IS NULL;

CREATE TABLE questions (
    id          uuid PRIMARY KEY,
    form_id     uuid NOT NULL REFERENCES forms (id),
    label       text NOT NULL,
    type        text NOT NULL CHECK (type IN ('text', 'long_text', 'number', 'email', 'phone',
                                              'single_choice', 'multi_choice', 'date', 'boolean')),
    alias       text CHECK (alias ~ '^[a-z][a-z0-9_]{0,62}$'),
    position    integer NOT NULL,
    required    boolean NOT NULL DEFAULT false,
    -- [{"code": "...", "label": "..."}]; empty unless the type is a choice.
    options     jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(options) = 'array'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Questions are never removed: answers and sheet columns keep referring to them.
    deleted_at  timestamptz
);
CREATE INDEX questions_form_idx ON questions (form_id, position);
CREATE UNIQUE INDEX questions_alias_uq ON questions (form_id, alias)
    WHERE deleted_at IS NULL AND alias IS NOT NULL;

-- Responses and answers are hash-partitioned by form: every access path (API pages, CDC
-- events, backfills) is per form, so each query prunes to one partition.
CREATE TABLE responses (
    form_id          uuid NOT NULL,   -- no foreign key: see README
    id               uuid NOT NULL,
    org_id           uuid NOT NULL,
    -- 1 on submission, +1 on every edit and on deletion; sinks drop events older than what
    -- they have already applied.
    revision         integer NOT NULL DEFAULT 1 CHECK (revision >= 1),
    source           text NOT NULL DEFAULT 'api',
    -- Client-chosen Idempotency-Key and the SHA-256 of the request it came with.
    idempotency_key  text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_sha256   bytea,
    metadata         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    -- The response document: {"<question id>": {"alias", "type", "value"}}. Written with
    -- the answers rows in one transaction; it makes every row change of this table a
    -- self-contained event for the CDC reader.
    answers          jsonb NOT NULL CHECK (jsonb_typeof(answers) = 'object'),
    submitted_at     timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz,
    PRIMARY KEY (form_id, id)
) PARTITION BY HASH (form_id);
-- NULL keys never conflict, so submissions without a key are not constrained.
CREATE UNIQUE INDEX responses_idempotency_uq ON responses (form_id, idempotency_key);

-- One row per (response, question): the relational projection of the response document,
-- with the value in the column of its type, for queries and reporting. Written only by the
-- statement or transaction that writes its response (no foreign key: see README).
CREATE TABLE answers (
    form_id        uuid NOT NULL,
    response_id    uuid NOT NULL,
    question_id    uuid NOT NULL,
    value_text     text,          -- text, long_text, email, phone, single_choice
    value_number   numeric,       -- number
    value_boolean  boolean,       -- boolean
    value_date     date,          -- date
    value_choices  text[],        -- multi_choice
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (form_id, response_id, question_id),
    CHECK (num_nonnulls(value_text, value_number, value_boolean, value_date, value_choices) = 1)
) PARTITION BY HASH (form_id);
-- Per-question reporting (counts per choice, numeric aggregates) within a form.
CREATE INDEX answers_question_idx ON answers (form_id, question_id);

DO $$
BEGIN
    FOR i IN 0..15 LOOP
        EXECUTE format('CREATE TABLE responses_p%s PARTITION OF responses
                        FOR VALUES WITH (MODULUS 16, REMAINDER %s)', lpad(i::text, 2, '0'), i);
        EXECUTE format('CREATE TABLE answers_p%s PARTITION OF answers
                        FOR VALUES WITH (MODULUS 16, REMAINDER %s)', lpad(i::text, 2, '0'), i);
        -- The CDC reader needs whole old rows (see README): set on every leaf, where
        -- Postgres decides what an UPDATE or DELETE logs.
        EXECUTE format('ALTER TABLE responses_p%s REPLICA IDENTITY FULL', lpad(i::text, 2, '0'));
    END LOOP;
END $$;

ALTER TABLE forms REPLICA IDENTITY FULL;
ALTER TABLE questions REPLICA IDENTITY FULL;
ALTER TABLE responses REPLICA IDENTITY FULL;
