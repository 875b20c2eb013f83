-- Indexes for the sweeper's periodic re-read of unfinished Klarna orders (workers/
-- sweeper.py, `stale`): without them that query reads every order on every sweep.
-- Both are partial on the query's own filter, so they hold only open, unfinished Klarna
-- orders nobody has asked to reconcile yet; a finished order leaves them. See
-- docs/performance.md ("Scale") for the plans before and after.

CREATE INDEX orders_resync_due ON orders (psp_synced_at)
    WHERE provider = 'klarna' AND status = 'open'
      AND psp_status IN ('authorized', 'part_captured')
      AND reconcile_requested_at IS NULL;

CREATE INDEX orders_expiring ON orders (expires_at)
    WHERE provider = 'klarna' AND status = 'open'
      AND psp_status IN ('authorized', 'part_captured')
      AND reconcile_requested_at IS NULL;
