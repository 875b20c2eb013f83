DROP TRIGGER orders_psp_state_seq ON orders;
DROP FUNCTION orders_bump_psp_state_seq();
ALTER TABLE orders DROP COLUMN psp_state_seq;
ALTER TABLE operations DROP COLUMN failed_psp_references;
ALTER TABLE operations DROP COLUMN request;
