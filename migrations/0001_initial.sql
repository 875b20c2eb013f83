-- The service's whole state: the shop's desired orders, what the PSPs have done,
-- every received webhook, and every PSP operation with its idempotency key.

CREATE TABLE orders (
    id                      text PRIMARY KEY,
    version                 bigint NOT NULL CHECK (version >= 0),
    provider                text NOT NULL CHECK (provider IN ('klarna', 'adyen')),
    psp_order_id            text NOT NULL,
    currency                char(3) NOT NULL,
    status                  text NOT NULL CHECK (status IN ('open', 'cancelled')),
    snapshot                jsonb NOT NULL,
    desired_amount          bigint NOT NULL CHECK (desired_amount >= 0),
    -- NULL until the PSP's figure is known (Klarna: read before the first operation).
    authorized_amount       bigint CHECK (authorized_amount >= 0),
    captured_amount         bigint NOT NULL DEFAULT 0 CHECK (captured_amount >= 0),
    refunded_amount         bigint NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    -- The basket the PSP last authorized (Klarna's order_lines, or our last update).
    authorized_lines        jsonb NOT NULL DEFAULT '[]',
    psp_status              text CHECK (psp_status IN ('authorized', 'part_captured',
                                'captured', 'cancelled', 'expired', 'closed')),
    psp_payment_method      text,
    psp_country             text,
    psp_synced_at           timestamptz,
    expires_at              timestamptz,
    flags                   text[] NOT NULL DEFAULT '{}'
                            CHECK (flags <@ ARRAY['needs_new_order', 'needs_attention']::text[]),
    flag_reason             jsonb,
    -- A total the PSP refused to authorize: not asked for again until the shop changes it.
    refused_amount          bigint,
    -- Set whenever the order may be out of sync; cleared by the reconciler once it is.
    reconcile_requested_at  timestamptz,
    next_reconcile_at       timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT captured_within_authorized
        CHECK (authorized_amount IS NULL OR captured_amount <= authorized_amount),
    CONSTRAINT refunded_within_captured CHECK (refunded_amount <= captured_amount),
    CONSTRAINT one_order_per_payment UNIQUE (provider, psp_order_id)
);

CREATE INDEX orders_reconcile_requested ON orders (reconcile_requested_at)
    WHERE reconcile_requested_at IS NOT NULL;
CREATE INDEX orders_flagged ON orders (updated_at DESC, id DESC) WHERE flags <> '{}';

CREATE TABLE inbox (
    id            bigserial PRIMARY KEY,
    source        text NOT NULL CHECK (source IN ('shop', 'adyen')),
    event_key     text NOT NULL,
    event_type    text NOT NULL,
    order_id      text,
    payload       jsonb NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz,
    outcome       text,
    CONSTRAINT inbox_event_once UNIQUE (source, event_key)
);

CREATE INDEX inbox_unprocessed ON inbox (received_at) WHERE processed_at IS NULL;

CREATE TABLE operations (
    id               uuid PRIMARY KEY,
    order_id         text NOT NULL REFERENCES orders (id),
    seq              integer NOT NULL CHECK (seq > 0),
    kind             text NOT NULL CHECK (kind IN ('update_authorization', 'capture', 'refund',
                         'cancel', 'release_authorization', 'extend_authorization')),
    status           text NOT NULL CHECK (status IN ('pending', 'sent', 'awaiting_notification',
                         'succeeded', 'rejected', 'failed')),
    amount           bigint NOT NULL CHECK (amount >= 0),
    lines            jsonb NOT NULL DEFAULT '[]',
    target_version   bigint NOT NULL,
    idempotency_key  text NOT NULL,
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz,
    -- Who may send it now: a worker claims the operation for a while; an expired lease
    -- means that worker died and the outcome of its call is unknown.
    lease_token      uuid,
    lease_until      timestamptz,
    outcome_unknown  boolean NOT NULL DEFAULT false,
    psp_reference    text,
    error            jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT operations_key_once UNIQUE (idempotency_key),
    CONSTRAINT operations_seq_once UNIQUE (order_id, seq)
);

-- At most one PSP operation per order is in flight, whatever the workers do.
CREATE UNIQUE INDEX operations_one_in_flight ON operations (order_id)
    WHERE status IN ('pending', 'sent', 'awaiting_notification');
CREATE INDEX operations_due ON operations (next_attempt_at) WHERE status = 'pending';
CREATE INDEX operations_leased ON operations (lease_until) WHERE status = 'sent';
