-- Integrations: a kind of sink attached to a form by configuration.

CREATE TABLE integrations (
    id            uuid PRIMARY KEY,
    org_id        uuid NOT NULL REFERENCES organizations (id),
    form_id       uuid NOT NULL,
    kind          text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_]{0,31}$'),
    -- Optional operator-chosen name, unique per organization (declarative files key on it).
    name          text CHECK (length(name) BETWEEN 1 AND 200),
    -- Validated by the kind; never holds secrets.
    config        jsonb NOT NULL CHECK (jsonb_typeof(config) = 'object'),
    -- AES-256-GCM (nonce || ciphertext) of the credentials JSON; never returned by the API.
    credentials   bytea,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'deleted')),
    status_reason text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX integrations_org_idx ON integrations (org_id, id) WHERE status <> 'deleted';
CREATE INDEX integrations_active_idx ON integrations (status) WHERE status = 'active';
CREATE UNIQUE INDEX integrations_name_uq ON integrations (org_id, name) WHERE status <> 'deleted';
