"""Tariffs: the admin-managed prices, stored in SQL."""
