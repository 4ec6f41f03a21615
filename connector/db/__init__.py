"""The metadata database: engine, schema and migrations (SQLite by default, PostgreSQL in production)."""
