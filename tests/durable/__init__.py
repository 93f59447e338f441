"""Tests of hybrid.durable: durable agents checkpointed to SQLite or Postgres."""
