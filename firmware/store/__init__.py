"""Durable state behind the core's store port; SQLite (WAL, synchronous=FULL) is the default."""
