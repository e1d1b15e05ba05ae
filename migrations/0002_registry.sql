-- Storage of `collect registry`, the Confluent-compatible schema registry. Ids are global
-- and never reused: a registry that forgot its ids would make every stored event
-- undecodable.

CREATE TABLE registry_schemas (
    id           serial PRIMARY KEY,
    schema_type  text NOT NULL DEFAULT 'AVRO',
    -- The schema as compact JSON (whitespace removed), as returned to clients.
    schema_text  text NOT NULL,
    -- SHA-256 of type and compact text: one id per distinct schema, whatever the subject.
    fingerprint  bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE registry_versions (
    subject     text NOT NULL CHECK (length(subject) BETWEEN 1 AND 255),
    version     integer NOT NULL CHECK (version >= 1),
    schema_id   integer NOT NULL REFERENCES registry_schemas (id),
    -- Soft-deleted versions keep their number (numbering never goes back) and their id.
    deleted     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, version)
);
CREATE INDEX registry_versions_schema_idx ON registry_versions (schema_id);

-- Compatibility levels: subject '' is the global default.
CREATE TABLE registry_config (
    subject        text PRIMARY KEY,
    compatibility  text NOT NULL CHECK (compatibility IN ('NONE', 'BACKWARD', 'BACKWARD_TRANSITIVE',
                                        'FORWARD', 'FORWARD_TRANSITIVE', 'FULL', 'FULL_TRANSITIVE'))
);
INSERT INTO registry_config (subject, compatibility) VALUES ('', 'BACKWARD');
