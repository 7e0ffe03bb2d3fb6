"""A web front end that starts a chord and another endpoint that polls its result by id.

``POST /quotes`` with ``{"items": [["apple", 3], ["melon", 1]]}`` starts a chord
(one ``price`` task per item, then ``quote_total``) and answers 202 with the
quote's id at once. ``GET /quotes/<id>`` looks the result up in Kafka from
whichever web process serves it (it need not be the one that started it):
202 while pending, 200 with the total, or 422 naming the failed item.

    FLASK_APP=app flask run      # and, beside it: ktasks worker -A tasks
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request
from tasks import app as ktasks_app
from tasks import price, quote_total

from ktasks import TaskFailed, chord, group

web = Flask(__name__)


@web.post("/quotes")
def start_quote() -> Any:
    items = (request.get_json(silent=True) or {}).get("items")
    if not isinstance(items, list) or not items:
        return jsonify(error="give items: [[sku, qty], ...]"), 400
    result = chord(group(price.s(str(sku), int(qty)) for sku, qty in items), quote_total.s()).delay()
    return jsonify(id=result.id), 202


@web.get("/quotes/<quote_id>")
def poll_quote(quote_id: str) -> Any:
    result = ktasks_app.result(quote_id)
    if not result.ready():
        return jsonify(id=quote_id, status="PENDING"), 202
    try:
        value = result.get()
    except TaskFailed as exc:
        return jsonify(id=quote_id, status="FAILURE", error=exc.remote_message, failed=exc.task_name), 422
    return jsonify(id=quote_id, status="SUCCESS", lines=value["lines"], total=str(value["total"])), 200
