-- Every order's current event's body back into inbox_bodies, where the release before
-- reads all of them; the orders' writers are held off from the copy to the drop, so no
-- snapshot changes in between.
SET LOCAL lock_timeout = '5s';
LOCK TABLE orders IN SHARE ROW EXCLUSIVE MODE;
DROP TRIGGER orders_keep_replaced_body ON orders;
DROP FUNCTION ordersync_keep_replaced_body();
INSERT INTO inbox_bodies (inbox_id, payload)
SELECT i.id, jsonb_build_object('type', i.event_type, 'order', o.snapshot)
FROM orders o JOIN inbox i ON i.id = o.snapshot_inbox_id
ON CONFLICT (inbox_id) DO NOTHING;
ALTER TABLE orders DROP COLUMN snapshot_inbox_id;
