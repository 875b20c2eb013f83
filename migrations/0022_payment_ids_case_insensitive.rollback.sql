-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS one_order_per_payment_ci;
