-- One writer per integration, fenced. Every process (or operator's tool) that takes an
-- integration's lease (its advisory lock) bumps lease_generation and writes with it; the
-- sink's state writes (the Sheets row reservation, the SMS claim) check it in the same
-- statement or transaction, so a writer that lost its lease can no longer reserve rows or
-- claim sends.
ALTER TABLE integrations ADD COLUMN lease_generation bigint NOT NULL DEFAULT 0;
