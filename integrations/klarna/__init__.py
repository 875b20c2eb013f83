"""Klarna Order Management v1."""
