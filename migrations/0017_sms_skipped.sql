-- A response deleted before the SMS integration texted it is never texted, and the ledger
-- says so (state 'skipped'): an operator asking why a respondent got no text finds the answer
-- here. The integration learns of the deletion first when it was behind and the compacted
-- responses topic kept only the response's latest record.
ALTER TABLE sms_ledger DROP CONSTRAINT sms_ledger_state_check;
ALTER TABLE sms_ledger ADD CONSTRAINT sms_ledger_state_check
    CHECK (state IN ('claimed', 'sent', 'failed', 'ambiguous', 'skipped'));
