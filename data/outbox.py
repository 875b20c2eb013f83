"""The outbox: the service's own events to the shop (contract §4)."""

from __future__ import annotations

import uuid


def webhook_id(event_id: uuid.UUID | str) -> str:
    """The `webhook-id` an event is delivered under, stable across redeliveries."""
    return f"msg_{uuid.UUID(str(event_id)).hex}"
