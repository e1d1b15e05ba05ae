-- Phone questions may name the region of numbers written without a country code
-- (libphonenumber's default region, ISO 3166-1 alpha-2).
ALTER TABLE questions
    ADD COLUMN default_region text CHECK (default_region ~ '^[A-Z]{2}$');
