"""A Flask app that enqueues a ktasks task from a request handler.

    gunicorn --chdir examples/webapp -w 3 --threads 4 --preload -b 127.0.0.1:8000 app:app

``delay()`` only hands the message to the process's producer, which batches
it with others and sends it in the background, so the request is not held up
by a round trip to Kafka. Each gunicorn worker builds its own producer after
the fork, even with ``--preload``.
"""

from __future__ import annotations

import os
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from flask import Flask, jsonify, request
from tasks import process_order

app = Flask(__name__)


@app.get("/")
def index() -> Any:
    """A liveness check that says which process answered."""
    return jsonify(service="ktasks web example", pid=os.getpid())


@app.post("/orders")
def create_order() -> Any:
    """Enqueue ``process_order`` for the posted order and return the task id (202 Accepted)."""
    body = request.get_json(silent=True) or {}
    items = body.get("items", [])
    if not isinstance(items, list):
        return jsonify(error="items must be a list"), 400
    try:
        total = Decimal(str(body.get("total", "0")))
    except InvalidOperation:
        return jsonify(error="total must be a number"), 400
    order_id = str(body.get("order_id") or uuid.uuid4().hex)
    handle = process_order.delay(order_id, items, total)
    return jsonify(task_id=handle.id, order_id=order_id, pid=os.getpid()), 202
