-- transactional: false
-- Delivered outbox rows are pruned oldest first (workers/retention.py); without this
-- index each batch would read the whole outbox. Built CONCURRENTLY (no lock that
-- blocks writers, hence outside a transaction); lock_timeout bounds the brief waits it
-- still has, statement_timeout is off for the build itself on a large table.
SET lock_timeout = '5s';
SET statement_timeout = 0;
DROP INDEX CONCURRENTLY IF EXISTS outbox_delivered; -- an invalid leftover of a failed build
CREATE INDEX CONCURRENTLY outbox_delivered ON outbox (delivered_at)
    WHERE delivered_at IS NOT NULL;
RESET lock_timeout;
RESET statement_timeout;
