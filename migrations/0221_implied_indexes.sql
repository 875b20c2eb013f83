-- transactional: false
-- Two indexes whose every entry is already implied by another one's, written for
-- nothing on the hot paths (docs/performance.md, "Issue 20, round 6"):
--
-- * `one_order_per_payment` (provider, psp_order_id): `one_order_per_payment_ci`
--   (provider, lower(psp_order_id), migration 0022) is unique too, and two rows equal
--   on a payment id are equal on its lower case, so it enforces nothing more. Every new
--   order and every orders update that is not HOT (each of the receiver's, most of the
--   worker's) wrote an entry into both. The lookups by payment id use the other one
--   (data/orders.py, data/inbox.py: `lower(psp_order_id) = lower(…)` beside the exact
--   match).
-- * `inbox_unprocessed` (received_at) WHERE processed_at IS NULL: shop events are
--   stored processed, so it held only Adyen notifications, which
--   `inbox_unprocessed_due` holds as well; the metrics' counts (data/inbox.py BACKLOG,
--   UNMATCHED) name the source and read that one. Each sweep's offer wrote an entry
--   into both.
--
-- Dropped without a table rewrite; lock_timeout bounds the wait for the orders lock
-- that dropping a constraint takes.
SET lock_timeout = '5s';
SET statement_timeout = 0;
ALTER TABLE orders DROP CONSTRAINT IF EXISTS one_order_per_payment;
DROP INDEX CONCURRENTLY IF EXISTS inbox_unprocessed;
RESET lock_timeout;
RESET statement_timeout;
