-- Delivery reports that arrive before their message's SID is in the SMS ledger (the
-- provider's answer to the send still in flight, or lost and later reconciled) are kept here
-- and applied once the SID is recorded. Bounded: reports older than 7 days are dropped.
CREATE TABLE sms_delivery_pending (
    integration_id  uuid NOT NULL,
    provider_sid    text NOT NULL,
    status          text NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration_id, provider_sid)
);

-- How many times the provider's message list was searched for an ambiguous send: it is
-- resent only after several looks across the reconciliation window.
ALTER TABLE sms_ledger ADD COLUMN lookups integer NOT NULL DEFAULT 0;
