-- A Sheets integration that recreated a tab a person deleted asks for its events again
-- until the runtime has moved its offsets back (`on_deleted_tab = "recreate"`): the request
-- is stored with the tab's new sheet id and its emptied rows, in one transaction, so a crash
-- between the repair and the rewind still refills. A constant default: no table rewrite.
SET LOCAL lock_timeout = '5s';
ALTER TABLE sheets_state ADD COLUMN refill_requested boolean NOT NULL DEFAULT false;
