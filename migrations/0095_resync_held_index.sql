-- transactional: false
-- Klarna orders are read again while money is held whether they are captured or their
-- authorization expired after a part capture (data/orders.py RESYNC): refunds made in
-- Klarna's portal show only there. Replaces 0012's index, which covered captured ones.
-- Built CONCURRENTLY, as 0012.
SET lock_timeout = '5s';
SET statement_timeout = 0;
DROP INDEX CONCURRENTLY IF EXISTS orders_resync_held;
CREATE INDEX CONCURRENTLY orders_resync_held ON orders (psp_synced_at)
    WHERE provider = 'klarna' AND psp_status IN ('captured', 'expired')
      AND refunded_amount < captured_amount AND reconcile_requested_at IS NULL;
DROP INDEX CONCURRENTLY IF EXISTS orders_resync_captured;
RESET lock_timeout;
RESET statement_timeout;
