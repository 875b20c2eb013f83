-- transactional: false
-- Each order belongs to one of the merchant's PSP accounts (ordersync/accounts.py),
-- fixed with its first snapshot. Orders from before accounts belong to the default
-- account, named "default" here (the single-account variables' account, or the
-- ACCOUNTS_FILE account marked `default = true`, or its only one).
--
-- Safe on a large, busy table, and safe to run again after a failure halfway (yoyo
-- records a non-transactional migration only once all of it ran):
-- * every statement that takes a table lock gives up after lock_timeout instead of
--   queueing (and making every webhook queue behind it) while a long transaction runs;
-- * ADD COLUMN without a default and SET DEFAULT only change the catalog (no rewrite);
--   the default covers rows written meanwhile by pods still on the previous release;
-- * existing rows are filled in batches along the primary key, each batch its own
--   transaction, so no row stays locked for longer than one batch;
-- * NOT NULL is a CHECK added NOT VALID (instant) and validated afterwards, which
--   scans the table under a lock that lets reads and writes go on.
SET lock_timeout = '5s';
SET statement_timeout = 0;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS account text;
ALTER TABLE orders ALTER COLUMN account SET DEFAULT 'default';
DO $$
DECLARE
    last_id text := '';
    batch_last text;
BEGIN
    LOOP
        WITH batch AS (
            SELECT id FROM orders WHERE id > last_id ORDER BY id LIMIT 5000
        ), filled AS (
            UPDATE orders o SET account = 'default'
            FROM batch b WHERE o.id = b.id AND o.account IS NULL
        )
        SELECT max(id) INTO batch_last FROM batch;
        EXIT WHEN batch_last IS NULL;
        last_id := batch_last;
        COMMIT;
    END LOOP;
END
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'orders_account_set') THEN
        ALTER TABLE orders ADD CONSTRAINT orders_account_set CHECK (account IS NOT NULL) NOT VALID;
    END IF;
END
$$;
ALTER TABLE orders VALIDATE CONSTRAINT orders_account_set;
RESET lock_timeout;
RESET statement_timeout;
