"""Adyen: Checkout v71 and classic Payment v68 modifications, notification HMAC."""
