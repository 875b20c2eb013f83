SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = 0;
LOCK TABLE inbox IN ACCESS EXCLUSIVE MODE;
ALTER TABLE inbox ADD COLUMN payload jsonb;
UPDATE inbox SET payload = b.payload FROM inbox_bodies b WHERE b.inbox_id = inbox.id;
DROP TABLE inbox_bodies;
