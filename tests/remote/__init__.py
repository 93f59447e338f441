"""Tests of hybrid.remote: remote agents on NATS, against a real nats-server."""
