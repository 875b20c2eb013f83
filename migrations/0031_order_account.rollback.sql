-- transactional: false
SET lock_timeout = '5s';
ALTER TABLE orders DROP COLUMN IF EXISTS account;
RESET lock_timeout;
