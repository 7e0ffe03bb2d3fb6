"""Helpers for the frameworks applications enqueue from: :mod:`.django` and :mod:`.sqlalchemy`."""
