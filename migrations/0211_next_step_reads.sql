-- What the reconciler's next step needs, returned by the statement that locks the order
-- (ordersync_lock_with_operations) or records a success under its lock
-- (ordersync_record_success, which replaces 0141's): the order's operations, read in a
-- statement of their own after the lock was granted, so they include what was committed
-- while it was waited for (a statement's CTEs or subqueries share one snapshot, taken
-- before the wait, and would not). One statement for the client where the lock and the
-- operations read took two (data/orders.py LOCK_WITH_OPERATIONS, RECORD_SUCCESS).

-- The order's operations, oldest first, as data/orders.py OPERATIONS reads them: every
-- column, and `leased` and `due` on the database's clock. JSON, not an array of the row
-- type: the client decodes JSON in C; a composite array it would parse in Python.
-- VOLATILE: its query takes a snapshot of its own, after the caller's lock was granted
-- (a STABLE function would read with its caller's).
CREATE FUNCTION ordersync_operations(p_order_id text) RETURNS json
LANGUAGE sql VOLATILE AS $fn$
    SELECT coalesce(json_agg(json_build_object(
               'row', o,
               'leased', coalesce(o.lease_until > now(), false),
               'due', coalesce(o.next_attempt_at <= now(), false)) ORDER BY o.seq), '[]')
    FROM operations o WHERE o.order_id = p_order_id
$fn$;

-- The order under its row lock (every writer of an order and its operations takes it
-- first), the transaction's clock, and then its operations. No row for an unknown order.
CREATE FUNCTION ordersync_lock_with_operations(p_order_id text)
RETURNS TABLE (r_order orders, r_now timestamptz, r_operations json)
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    SELECT * INTO r_order FROM orders WHERE id = p_order_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    r_now := now();
    r_operations := ordersync_operations(p_order_id);
    RETURN NEXT;
END
$fn$;

-- Recording an operation's success: 0141's function, now returning the operations read
-- after the record (and, when the lease was lost, a row with them alone).
DROP FUNCTION ordersync_record_success(text, uuid, uuid, text);
-- Recording an operation's success: the order's row lock, the operation's outcome and
-- the order's figures moved by it, as separate statements of one function call (one
-- statement for the client: data/orders.py RECORD_SUCCESS). Separate statements, not
-- one statement's CTEs: a statement's CTEs share one snapshot, taken before it waits
-- for the row lock, and would not see what was committed meanwhile; here each statement
-- after the lock takes its own. The figures are moved by the one rule
-- (data/orders.py _SUCCESS_FIGURES, which tests/data holds this body to).
-- No row when this worker no longer holds the operation's lease: nothing is written.
CREATE FUNCTION ordersync_record_success(p_order_id text, p_op_id uuid, p_token uuid,
                                         p_psp text)
RETURNS TABLE (r_order orders, r_now timestamptz, r_seq_before bigint, r_operations json)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_seq bigint;
    v_kind text;
    v_amount bigint;
    v_lines jsonb;
BEGIN
    -- Every writer of an order and its operations takes the order's row lock first.
    SELECT psp_state_seq INTO v_seq FROM orders WHERE id = p_order_id FOR UPDATE;
    UPDATE operations
    SET status = 'succeeded', psp_reference = coalesce(p_psp, psp_reference), error = NULL,
        next_attempt_at = NULL, outcome_unknown = false, lease_token = NULL,
        lease_until = NULL, updated_at = now()
    WHERE id = p_op_id AND lease_token = p_token
    RETURNING kind, amount, lines INTO v_kind, v_amount, v_lines;
    IF NOT FOUND THEN
        -- The lease is lost: nothing written, no order; the operations as they are.
        r_operations := ordersync_operations(p_order_id);
        RETURN NEXT;
        RETURN;
    END IF;
    UPDATE orders o SET
    authorized_amount = CASE op.kind
        WHEN 'update_authorization' THEN op.amount
        -- A capture the PSP confirms is counted whatever we believed of the
        -- authorization (an EXPIRE may have arrived before this capture's own
        -- notification): the authorization is at least what was captured under it.
        WHEN 'capture' THEN greatest(o.authorized_amount, o.captured_amount + op.amount)
        WHEN 'release_authorization' THEN o.captured_amount
        ELSE o.authorized_amount END,
    authorized_lines = CASE op.kind WHEN 'update_authorization' THEN op.lines
                                    ELSE o.authorized_lines END,
    captured_amount = o.captured_amount + CASE op.kind WHEN 'capture' THEN op.amount ELSE 0 END,
    refunded_amount = o.refunded_amount + CASE op.kind WHEN 'refund' THEN op.amount ELSE 0 END,
    psp_status = CASE
        WHEN op.kind = 'capture' AND coalesce(o.psp_status, '') NOT IN ('expired', 'closed')
        THEN CASE WHEN o.captured_amount + op.amount >= o.authorized_amount THEN 'captured'
                  ELSE 'part_captured' END
        WHEN op.kind = 'cancel' THEN 'cancelled'
        WHEN op.kind = 'release_authorization' THEN 'captured'
        ELSE o.psp_status END,
    -- An extension's new expiry is Klarna's to say: read the order again before the
    -- next step.
    psp_synced_at = CASE op.kind WHEN 'extend_authorization' THEN NULL
                                 ELSE o.psp_synced_at END,
    updated_at = now()
    FROM (SELECT v_kind AS kind, v_amount AS amount, v_lines AS lines) AS op
    WHERE o.id = p_order_id
    RETURNING o.* INTO r_order;
    r_now := now();
    r_seq_before := v_seq;
    -- Read after the record, in a statement of its own: it sees what was committed
    -- while the lock was waited for, and the record itself.
    r_operations := ordersync_operations(p_order_id);
    RETURN NEXT;
END
$fn$;
