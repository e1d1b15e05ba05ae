-- Where an integration starts, and the fencing of its writers.
--
-- start_mode: 'history' (the form's whole history: a mirror such as a sheet), 'creation'
-- (responses submitted from the integration's creation on: a notification such as an SMS),
-- 'at' (responses submitted from start_at on). The runtime skips response events submitted
-- before start_at, for every kind. Existing SMS integrations start at their creation, which is
-- what their ledger already covered.
ALTER TABLE integrations
    ADD COLUMN start_mode text NOT NULL DEFAULT 'history'
        CHECK (start_mode IN ('history', 'creation', 'at')),
    ADD COLUMN start_at timestamptz,
    ADD CONSTRAINT integrations_start_at CHECK ((start_mode = 'history') = (start_at IS NULL));
UPDATE integrations SET start_mode = 'creation', start_at = created_at WHERE kind = 'sms';

-- The SMS ledger is kept per form and purpose (the integration's name, or its id when it has
-- none), not per integration: deleting an integration and attaching it again under the same
-- name never texts a respondent twice.
ALTER TABLE sms_ledger
    ADD COLUMN form_id uuid,
    ADD COLUMN purpose text;
UPDATE sms_ledger l SET form_id = i.form_id, purpose = coalesce(i.name, i.id::text)
    FROM integrations i WHERE i.id = l.integration_id;
DELETE FROM sms_ledger WHERE form_id IS NULL;
ALTER TABLE sms_ledger
    ALTER COLUMN form_id SET NOT NULL,
    ALTER COLUMN purpose SET NOT NULL;
-- An integration deleted and attached again under the same name may have texted the same
-- responses twice already (the fault this fixes): keep one entry per response, the one that
-- says most (sent, then in doubt, then failed).
DELETE FROM sms_ledger l USING (
    SELECT ctid, row_number() OVER (
        PARTITION BY form_id, purpose, response_id
        ORDER BY CASE state WHEN 'sent' THEN 0 WHEN 'ambiguous' THEN 1 WHEN 'claimed' THEN 1 ELSE 2 END,
                 claimed_at
    ) AS n
    FROM sms_ledger
) d
WHERE l.ctid = d.ctid AND d.n > 1;
CREATE UNIQUE INDEX sms_ledger_purpose_uq ON sms_ledger (form_id, purpose, response_id);
-- Reconciliation excludes messages any integration accounted for, by recipient.
CREATE INDEX sms_ledger_by_recipient ON sms_ledger (to_number) WHERE provider_sid IS NOT NULL;
