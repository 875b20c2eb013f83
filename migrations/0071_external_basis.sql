-- Money that moved without the service and whose lines the PSP did not name (an Adyen
-- Customer Area capture or refund, a chargeback, a read without lines) is tied to units
-- later, when the shop's snapshots explain it (domain/planner.py _attribution). It is
-- tied at the prices the units had when the service learnt of it, never at a price the
-- shop set since: the snapshot stored at that moment is kept with the operation.
ALTER TABLE operations ADD COLUMN basis jsonb;

-- Rows recorded before this column: the order's current snapshot is the one stored when
-- they were learnt if the shop has sent nothing since; the others stay without a basis
-- and are never tied to units (a person looks: they are flagged external_change).
UPDATE operations o SET basis = ord.snapshot
FROM orders ord
WHERE o.order_id = ord.id AND o.external AND o.lines = '[]'::jsonb
  AND o.target_version = ord.version;
