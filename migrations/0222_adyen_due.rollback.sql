SET LOCAL lock_timeout = '5s';
LOCK TABLE inbox IN SHARE ROW EXCLUSIVE MODE;
ALTER TABLE inbox ADD COLUMN next_attempt_at timestamptz;
UPDATE inbox SET next_attempt_at = d.next_attempt_at
FROM adyen_due d WHERE d.inbox_id = inbox.id AND d.next_attempt_at IS NOT NULL;
CREATE INDEX inbox_unprocessed_due ON inbox ((coalesce(next_attempt_at, received_at)))
    WHERE processed_at IS NULL AND source = 'adyen';
DROP TABLE adyen_due;
