-- transactional: false
-- One order per payment whatever the case of its id: Adyen's pspReference and Klarna's
-- order id (a UUID) name the same payment in upper and lower case. Built CONCURRENTLY
-- (no lock that blocks writers on a large table, hence outside a transaction); an
-- existing pair that differs only in case stops the migration with a message saying
-- so, before the build, and is for an operator to resolve.
SET lock_timeout = '5s';
SET statement_timeout = 0;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM orders GROUP BY provider, lower(psp_order_id) HAVING count(*) > 1)
    THEN
        RAISE EXCEPTION 'orders share a payment id that differs only in case; see'
            ' SELECT provider, lower(psp_order_id), array_agg(id) FROM orders'
            ' GROUP BY 1, 2 HAVING count(*) > 1';
    END IF;
END $$;
DROP INDEX CONCURRENTLY IF EXISTS one_order_per_payment_ci; -- an invalid leftover
CREATE UNIQUE INDEX CONCURRENTLY one_order_per_payment_ci
    ON orders (provider, lower(psp_order_id));
RESET lock_timeout;
RESET statement_timeout;
