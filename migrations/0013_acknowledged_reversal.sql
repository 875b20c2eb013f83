-- A reversal of shipped/returned quantities (needs_attention quantities_reversed) that an
-- operator's reconcile acknowledged: not flagged again while the snapshot says the same
-- (the order's other lines go on). Copied from the flag's reason by RELEASE_ORDER.
ALTER TABLE orders ADD COLUMN acknowledged_reversal text;
