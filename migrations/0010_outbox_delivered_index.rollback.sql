-- transactional: false
SET lock_timeout = '5s';
DROP INDEX CONCURRENTLY IF EXISTS outbox_delivered;
RESET lock_timeout;
