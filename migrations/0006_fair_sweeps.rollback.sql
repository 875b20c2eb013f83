DROP INDEX inbox_unprocessed_due;
ALTER TABLE inbox DROP COLUMN next_attempt_at;
ALTER TABLE orders DROP COLUMN sweep_after;
