-- Delivery reports of the SMS connector: the provider posts each message's status to
-- `collect connect` (POST /v1/callbacks/{integration}); the latest is kept here. A status
-- that ends the message's life (delivered, undelivered, failed, read) is not overwritten
-- by a late report of an earlier one.

ALTER TABLE sms_ledger
    ADD COLUMN delivery_status text,
    ADD COLUMN delivery_at timestamptz;

CREATE INDEX sms_ledger_by_sid ON sms_ledger (integration_id, provider_sid)
    WHERE provider_sid IS NOT NULL;
