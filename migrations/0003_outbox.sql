-- The service's own events to the shop (contract §4). A row is written in the same
-- transaction as the change it reports, so an event is never lost and never invented;
-- a worker delivers it afterwards and marks it delivered, so it is never sent again.

CREATE TABLE outbox (
    -- The Standard Webhooks `webhook-id` is derived from it: stable across retries.
    id               uuid PRIMARY KEY,
    -- Delivery order within an order: the shop sees events in the order they happened.
    seq              bigserial NOT NULL,
    order_id         text NOT NULL REFERENCES orders (id),
    event_type       text NOT NULL CHECK (event_type IN ('order.new_order_required',
                         'order.needs_attention', 'order.synced')),
    version          bigint NOT NULL,
    payload          jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- A worker sending the row holds it until then; a dead worker's claim runs out.
    lease_until      timestamptz,
    last_status      integer,
    last_error       text,
    delivered_at     timestamptz
);

CREATE INDEX outbox_order ON outbox (order_id, seq);
CREATE INDEX outbox_undelivered ON outbox (next_attempt_at) WHERE delivered_at IS NULL;

-- The operator view lists an order's webhooks, and the worker looks up when the snapshot
-- an operation served was received.
CREATE INDEX inbox_order ON inbox (order_id, received_at);
