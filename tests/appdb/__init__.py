"""Tests of ktasks.appdb: the outbox and claims tables in the application database."""
