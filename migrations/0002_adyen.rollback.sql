DROP TABLE adyen_payments;
DROP INDEX operations_awaiting;
DROP INDEX operations_psp_reference;
ALTER TABLE operations DROP COLUMN key_generation;
