-- Adyen: notifications settle operations asynchronously.

-- Adyen replays the first answer to a request whose Idempotency-Key it has seen, so a
-- capture that failed in a notification can only be sent again under a new key: the
-- generation is appended to the operation's key from the second generation on.
ALTER TABLE operations ADD COLUMN key_generation integer NOT NULL DEFAULT 0
    CHECK (key_generation >= 0);

-- Notifications are matched to operations by the modification's pspReference.
CREATE INDEX operations_psp_reference ON operations (psp_reference)
    WHERE psp_reference IS NOT NULL;
-- The sweeper chases operations whose notification never came.
CREATE INDEX operations_awaiting ON operations (updated_at)
    WHERE status = 'awaiting_notification';

-- What AUTHORISATION notifications said about a payment, kept even when the shop's
-- order has not arrived yet: its first snapshot then starts from Adyen's figure.
CREATE TABLE adyen_payments (
    psp_reference       text PRIMARY KEY,
    authorized_amount   bigint NOT NULL CHECK (authorized_amount >= 0),
    currency            char(3) NOT NULL,
    merchant_account    text,
    lines               jsonb NOT NULL DEFAULT '[]',
    received_at         timestamptz NOT NULL DEFAULT now()
);
