"""SQL storage (SQLite by default, PostgreSQL by URL): runs and the event outbox."""
