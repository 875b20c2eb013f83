-- Issue 11: fair sweeps. Each row the sweeper offers again gets its own next-due time,
-- backing off with its age, and the sweeps take the rows that are due soonest: a row
-- that never clears cannot push the others out of every batch.

ALTER TABLE orders ADD COLUMN sweep_after timestamptz;
ALTER TABLE inbox ADD COLUMN next_attempt_at timestamptz;

CREATE INDEX inbox_unprocessed_due ON inbox ((coalesce(next_attempt_at, received_at)))
    WHERE processed_at IS NULL AND source = 'adyen';
