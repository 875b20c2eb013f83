-- The Adyen sweep's state in a table the size of its working set (data/inbox.py
-- DUE_NOTIFICATIONS). Each offer pushed its notification back by updating the inbox row;
-- `next_attempt_at` is in the expression of `inbox_unprocessed_due`, so that update was
-- never HOT: a new row version and an entry in each of the inbox's indexes, three of
-- them one to two levels deeper at 10 M webhooks than at 20 k, and the sweep grew with
-- the inbox (docs/performance.md, "Issue 20, round 5: the 10 M inbox"). A row here is
-- one unprocessed Adyen notification: written with it, moved by the sweep and by a
-- miss, deleted when it is processed (data/inbox.py keeps the two in step). An offer
-- then updates one small row and its two small indexes, at any size of the inbox.
--
-- `received_at` is the notification's (the back-off grows with its age); `unmatched`
-- is its outcome so far (the sweep backs such one off longer), both copied so that the
-- sweep reads no inbox row.
--
-- The copy holds the inbox's writers off until it commits (a notification stored in
-- between would be in neither); it copies only what is unprocessed. lock_timeout bounds
-- the wait for the lock.
SET LOCAL lock_timeout = '5s';
LOCK TABLE inbox IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE adyen_due (
    inbox_id         bigint PRIMARY KEY,
    received_at      timestamptz NOT NULL,
    next_attempt_at  timestamptz,
    unmatched        boolean NOT NULL DEFAULT false
);
CREATE INDEX adyen_due_at ON adyen_due ((coalesce(next_attempt_at, received_at)));
INSERT INTO adyen_due (inbox_id, received_at, next_attempt_at, unmatched)
SELECT id, received_at, next_attempt_at, outcome IS NOT DISTINCT FROM 'unmatched'
FROM inbox WHERE source = 'adyen' AND processed_at IS NULL;

DROP INDEX inbox_unprocessed_due;
ALTER TABLE inbox DROP COLUMN next_attempt_at;
