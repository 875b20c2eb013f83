-- Contract §4's money rules.
-- What an order's first snapshot fixes for good (currency and payment), by the path of
-- the field a later snapshot would change (domain/snapshot.py fixed_terms). NULL for an
-- order stored before this migration: its payment is still checked by provider and id.
ALTER TABLE orders ADD COLUMN fixed_terms jsonb;
-- Money that moved without the service (a portal capture or refund, a chargeback, a
-- capture before our first read), recorded as a succeeded operation so that the ledger
-- counts it and nothing makes it a second time; never sent.
ALTER TABLE operations ADD COLUMN external boolean NOT NULL DEFAULT false;
-- An event the shop refused (4xx) CALLBACK_PARK_ATTEMPTS times is parked: the order's
-- later events are delivered, and the operator view shows it.
ALTER TABLE outbox ADD COLUMN parked_at timestamptz;
