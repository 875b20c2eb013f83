-- A shop event's body stored once. The body of an applied shop event is its type and the
-- order's snapshot, and the receiver wrote both: the snapshot into `orders` and the body
-- into `inbox_bodies`, ~1 kB each, the larger part of the WAL of a webhook
-- (docs/performance.md, "Issue 20, round 7"). Now the order's row says which inbox row
-- its snapshot came from (`snapshot_inbox_id`), and that event's body is not written to
-- `inbox_bodies`: it is `{"type": <inbox.event_type>, "order": <orders.snapshot>}`, the
-- same JSON value (data/inbox.py reads it so). When a newer snapshot replaces it, the
-- trigger below writes the replaced event's body into `inbox_bodies`, in the same
-- statement as the update: every event's body is then in one place or the other.
--
-- Retention: a body in `inbox_bodies` goes as before. The order's current event's body
-- is the order's snapshot, kept with the order (orders are never pruned); once replaced
-- it is written with its own inbox id, unless the body pass's cursor has passed that id
-- (its age is past RETENTION_BODY_DAYS: the pass would have pruned it). Either way the
-- key pass deletes a body with its key.
--
-- The trigger also serves a receiver of the release before (a rolling deploy): it
-- writes every body into `inbox_bodies` and sets no `snapshot_inbox_id`, so an order it
-- updates has its pointer cleared here (the new snapshot's body is in `inbox_bodies`).
-- Rows from before this migration have no pointer: their bodies are all in
-- `inbox_bodies`, as they were.
--
-- Adding a nullable column without a default rewrites nothing; its lock (and the
-- trigger's) is short, and lock_timeout keeps it from queueing every writer of orders
-- behind a long transaction.
SET LOCAL lock_timeout = '5s';
ALTER TABLE orders ADD COLUMN snapshot_inbox_id bigint;

CREATE FUNCTION ordersync_keep_replaced_body() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO inbox_bodies (inbox_id, payload)
    SELECT i.id, jsonb_build_object('type', i.event_type, 'order', OLD.snapshot)
    FROM inbox i
    WHERE i.id = OLD.snapshot_inbox_id
      AND i.id > coalesce((SELECT last_id FROM retention_cursor WHERE name = 'inbox_bodies'), 0)
    ON CONFLICT (inbox_id) DO NOTHING;
    IF NEW.snapshot_inbox_id IS NOT DISTINCT FROM OLD.snapshot_inbox_id THEN
        NEW.snapshot_inbox_id := NULL;
    END IF;
    RETURN NEW;
END
$fn$;

-- Only statements that name the snapshot or the pointer (the receiver's) consider it;
-- the worker's updates of an order name neither.
CREATE TRIGGER orders_keep_replaced_body
BEFORE UPDATE OF snapshot, snapshot_inbox_id ON orders
FOR EACH ROW
WHEN (OLD.snapshot_inbox_id IS NOT NULL
      AND (NEW.version IS DISTINCT FROM OLD.version
           OR NEW.snapshot_inbox_id IS DISTINCT FROM OLD.snapshot_inbox_id))
EXECUTE FUNCTION ordersync_keep_replaced_body();
