-- The SMS connector's ledger: at most one message per (integration, response). A row is
-- claimed before the provider is called; its state says what is known of the send.
--   claimed    the provider may or may not have been called (a crash in between)
--   sent       the provider accepted it (provider_sid)
--   failed     refused for good (invalid number, opted out); the event went to dead letters
--   ambiguous  the call may have reached the provider (timeout, reset, 5xx): reconciled
--              against the provider's message list before anything is sent again

CREATE TABLE sms_ledger (
    integration_id  uuid NOT NULL,
    response_id     uuid NOT NULL,
    state           text NOT NULL CHECK (state IN ('claimed', 'sent', 'failed', 'ambiguous')),
    to_number       text NOT NULL,
    body            text NOT NULL,
    provider_sid    text,
    error           text,
    attempts        integer NOT NULL DEFAULT 1,
    claimed_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration_id, response_id)
);

CREATE INDEX sms_ledger_unresolved ON sms_ledger (integration_id)
    WHERE state IN ('claimed', 'ambiguous');
