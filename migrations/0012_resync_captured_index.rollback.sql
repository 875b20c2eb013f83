-- transactional: false
SET lock_timeout = '5s';
DROP INDEX CONCURRENTLY IF EXISTS orders_resync_captured;
RESET lock_timeout;
