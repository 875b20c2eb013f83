-- Retention (workers/retention.py): processed inbox rows lose their bodies after
-- RETENTION_BODY_DAYS and their duplicate-detection keys after RETENTION_KEY_DAYS;
-- delivered outbox rows go after RETENTION_OUTBOX_DAYS. Orders and operations are kept.
-- Short timeouts (SET LOCAL: this migration's transaction only): on a busy table it
-- waits at most 5 s for its lock rather than queue every webhook behind it; rerun the
-- migration if it gives up.
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '60s';

-- A body is pruned before its key (NULL = pruned): the key keeps refusing a resent
-- webhook long after its body is gone. Metadata only, no table rewrite.
ALTER TABLE inbox ALTER COLUMN payload DROP NOT NULL;

-- How far each pruning pass has got through `inbox`, by id: each batch reads the next
-- ids from the primary key instead of scanning the rows already pruned.
CREATE TABLE retention_cursor (
    name     text PRIMARY KEY CHECK (name IN ('inbox_bodies', 'inbox_keys')),
    last_id  bigint NOT NULL DEFAULT 0
);
INSERT INTO retention_cursor (name) VALUES ('inbox_bodies'), ('inbox_keys');
