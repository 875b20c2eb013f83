-- Issue 11, the reconciler's safety: frozen requests, unknown outcomes, monotonic PSP
-- state.

-- The exact request of an operation (method, path, body), computed once when it is
-- planned and resent byte for byte on every attempt under its key; the check-read after
-- an unknown outcome compares the PSP's order with it. NULL for operations planned
-- before this migration (their request is built at their next attempt).
ALTER TABLE operations ADD COLUMN request jsonb;

-- The pspReferences of Adyen modifications that a notification failed: a notification
-- for one of them is stale; one for any other reference of the operation is the latest
-- generation's outcome and settles it, however early it comes.
ALTER TABLE operations ADD COLUMN failed_psp_references text[] NOT NULL DEFAULT '{}';

-- Bumped by every change of the PSP figures we keep: a PSP read is adopted only if the
-- number is still the one seen before the read started (a slower, older read never
-- overwrites a newer one). A trigger, so no writer can forget it.
ALTER TABLE orders ADD COLUMN psp_state_seq bigint NOT NULL DEFAULT 0;

CREATE FUNCTION orders_bump_psp_state_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.authorized_amount, NEW.captured_amount, NEW.refunded_amount, NEW.psp_status,
        NEW.authorized_lines, NEW.expires_at, NEW.psp_synced_at)
       IS DISTINCT FROM
       (OLD.authorized_amount, OLD.captured_amount, OLD.refunded_amount, OLD.psp_status,
        OLD.authorized_lines, OLD.expires_at, OLD.psp_synced_at) THEN
        NEW.psp_state_seq := OLD.psp_state_seq + 1;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER orders_psp_state_seq BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_bump_psp_state_seq();
