-- The operator console: who did what to which order, kept for ever (retention never
-- touches it), and when the sweeper last ran, for the console's health figures.

CREATE TABLE operator_actions (
    id          bigserial PRIMARY KEY,
    -- NULL for an action on a notification that belongs to no order.
    order_id    text,
    action      text NOT NULL CHECK (action IN ('reconcile', 'reprocess_notification',
                    'resend_event', 'acknowledge_flag')),
    -- The name of the operator token used (OPERATOR_TOKENS), or 'operator' / 'cli'.
    operator    text NOT NULL CHECK (length(operator) BETWEEN 1 AND 64),
    -- What the action was on: the flag, the inbox id, the event's webhook-id.
    target      text CHECK (length(target) <= 128),
    note        text CHECK (length(note) <= 2000),
    detail      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX operator_actions_order ON operator_actions (order_id, created_at);

-- One row per periodic job, stamped at the end of each run.
CREATE TABLE job_runs (
    name         text PRIMARY KEY,
    finished_at  timestamptz NOT NULL
);
