"""Persistent state: SQLite (WAL) holding VM definitions, runtime records and the event log."""
