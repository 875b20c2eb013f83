DROP INDEX IF EXISTS orders_expiring;
DROP INDEX IF EXISTS orders_resync_due;
