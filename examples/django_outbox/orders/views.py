"""``POST /orders``: the order and its confirmation task commit together, or not at all."""

import json
import os

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from ktasks.contrib.django import outbox
from tasks import app as tasks_app
from tasks import send_confirmation

from .models import Order


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True, "pid": os.getpid()})


@csrf_exempt
def create_order(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    with transaction.atomic():
        Order.objects.create(id=body["order_id"], total=body["total"])
        entry = outbox(tasks_app).delay(send_confirmation, body["order_id"], body["total"])
        if body.get("fail"):
            # Something goes wrong after both writes: the transaction rolls back, and with it the task.
            raise RuntimeError(f"order {body['order_id']} failed after its writes")
    return JsonResponse({"order_id": body["order_id"], "task_id": entry.id}, status=201)
