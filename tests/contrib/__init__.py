"""Tests of ktasks.contrib: the Django and SQLAlchemy helpers."""
