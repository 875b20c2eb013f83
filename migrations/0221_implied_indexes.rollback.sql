-- transactional: false
SET lock_timeout = '5s';
SET statement_timeout = 0;
DROP INDEX CONCURRENTLY IF EXISTS inbox_unprocessed; -- an invalid leftover
CREATE INDEX CONCURRENTLY inbox_unprocessed ON inbox (received_at) WHERE processed_at IS NULL;
DROP INDEX CONCURRENTLY IF EXISTS one_order_per_payment; -- an invalid leftover
CREATE UNIQUE INDEX CONCURRENTLY one_order_per_payment ON orders (provider, psp_order_id);
ALTER TABLE orders ADD CONSTRAINT one_order_per_payment UNIQUE USING INDEX one_order_per_payment;
RESET lock_timeout;
RESET statement_timeout;
