DROP FUNCTION ordersync_record_success(text, uuid, uuid, text);
DROP FUNCTION ordersync_lock_with_operations(text);
DROP FUNCTION ordersync_operations(text);
-- 0141's function, as it was.
CREATE FUNCTION ordersync_record_success(p_order_id text, p_op_id uuid, p_token uuid,
                                         p_psp text)
RETURNS TABLE (r_order orders, r_now timestamptz, r_seq_before bigint)
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
    RETURN NEXT;
END
$fn$;
