"""Expiry: a task that reaches a worker after its ``expires`` time is not run, and recorded as ``expired``."""

from __future__ import annotations

import logging
import time

from ..middleware import Decision, Intake
from .notrun import NotRunRecorder

logger = logging.getLogger(__name__)

__all__ = ["ExpiryMiddleware"]


class ExpiryMiddleware(NotRunRecorder):
    """Skips records past their ``expires`` (``apply_async(expires_s=...)``); a replay ignores it.

    Checked when a record is due: an ETA that expires before it is due never
    runs. The check is one comparison; the ledger write happens only for an
    expired record.
    """

    def intake(self, record: Intake) -> Decision | None:
        expires = record.message.expires
        if expires is None or record.replay:
            return None
        now = time.time()
        if now <= expires:
            return None
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        return self.skip(record, "expired", f"expired at {stamp}, {now - expires:.3f} s before a worker took it")
