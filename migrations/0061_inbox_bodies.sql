-- Inbox bodies in a table of their own (data/inbox.py, workers/retention.py). Pruning a
-- body was `UPDATE inbox SET payload = NULL`: never a HOT update on insert-filled pages,
-- so every pruned row added entries to each of the inbox's indexes at random leaves,
-- and the prune's cost grew with the table (2.8x at 10 M webhooks against 20 k,
-- docs/performance.md). Deleting a row of `inbox_bodies` adds no index entry and touches
-- only its oldest, contiguous pages. A body is written in the same statement as its
-- inbox row; a row without a body is one whose body was pruned.
--
-- No foreign key: its check on every insert would lock the inbox row just written (a
-- row lock and its WAL record per webhook on the receiver's path), and its cascade on
-- every key pruned is a query per row (6 ms per 1,000 keys). Bodies are written only
-- with their row, and retention deletes a key's body with the key (data/inbox.py).
--
-- The copy holds the inbox's lock until it commits: the receiver waits for it rather
-- than write a row whose body would be lost when the column goes. lock_timeout bounds
-- the wait for the lock; the copy itself is bounded by the bodies retention has left
-- (RETENTION_BODY_DAYS of webhooks).
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = 0;
LOCK TABLE inbox IN ACCESS EXCLUSIVE MODE;

CREATE TABLE inbox_bodies (
    inbox_id  bigint PRIMARY KEY,
    payload   jsonb NOT NULL
);
INSERT INTO inbox_bodies (inbox_id, payload)
SELECT id, payload FROM inbox WHERE payload IS NOT NULL ORDER BY id;
ALTER TABLE inbox DROP COLUMN payload;

-- The body pass's cursor keeps its name ('inbox_bodies'); it walks inbox ids as before.
