-- transactional: false
SET lock_timeout = '5s';
SET statement_timeout = 0;
DROP INDEX CONCURRENTLY IF EXISTS orders_resync_captured;
CREATE INDEX CONCURRENTLY orders_resync_captured ON orders (psp_synced_at)
    WHERE provider = 'klarna' AND psp_status = 'captured'
      AND refunded_amount < captured_amount AND reconcile_requested_at IS NULL;
DROP INDEX CONCURRENTLY IF EXISTS orders_resync_held;
RESET lock_timeout;
RESET statement_timeout;
