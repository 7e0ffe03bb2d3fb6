"""Task results and workflows with Kafka as the only store (docs/results.md).

``handle.get()`` waits on the sender's reply partition (:mod:`.replies`);
``app.result(task_id)`` reads the results topic (:mod:`.lookup`); the canvas
(:mod:`.canvas`) builds chains, groups and chords, joined in Kafka
(:mod:`.chord`); :mod:`.middleware` publishes the outcomes.
"""

from __future__ import annotations

from .canvas import Signature, chain, chord, group
from .handles import FAILURE, PENDING, SUCCESS, AsyncResult, GroupResult
from .middleware import ResultsMiddleware

__all__ = ["AsyncResult", "GroupResult", "Signature", "chain", "group", "chord", "ResultsMiddleware",
           "PENDING", "SUCCESS", "FAILURE"]
