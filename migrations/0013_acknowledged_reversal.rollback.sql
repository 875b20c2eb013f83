ALTER TABLE orders DROP COLUMN IF EXISTS acknowledged_reversal;
