"""The dashboard's routes: server-rendered pages (Starlette + Jinja2), a fragment the page polls.

Reads only Kafka (through :class:`~.state.DashboardState`, ``ktasks.deadletter``
and ``ktasks.inspect``) and, for a task's ledger entry, the SQLite ledger of a
reporting worker on this host. Replay and purge change Kafka: they exist only
when the dashboard was started with actions allowed, always go through a
confirmation page, and need the per-process form token (so another site
cannot post them through the operator's browser).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .. import deadletter as dlt
from ..errors import KtasksError
from ..kafka import TopicPartition
from .charts import line_chart
from .state import DashboardState

logger = logging.getLogger(__name__)

__all__ = ["create_app"]

HERE = Path(__file__).resolve().parent
#: Dead letters listed per partition (the newest ones).
DLT_TAIL = 50


def _letter_view(x: dlt.StoredDeadLetter) -> dict[str, Any]:
    msg = x.message
    return {"topic": x.topic, "partition": x.partition, "offset": x.offset, "time": x.time,
            "task": x.task or "?", "id": x.task_id or "?", "reason": x.reason or "?",
            "error": f"{x.exc_type or ''}: {x.exc_message or ''}".strip(": "), "attempts": x.attempts,
            "host": x.host, "group": x.group, "origin": x.original_topic, "stacktrace": x.stacktrace,
            "args": repr(msg.args) if msg else None, "kwargs": repr(msg.kwargs) if msg else None,
            "decode_error": x.decode_error}


def create_app(ktasks_app: Any, *, allow_actions: bool = False, refresh_s: float = 2.0,
               state: DashboardState | None = None) -> Starlette:
    """The dashboard of ``ktasks_app`` as an ASGI app (run it with uvicorn)."""
    state = state or DashboardState(ktasks_app, refresh_s=refresh_s)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    token = secrets.token_urlsafe(24)
    host = socket.gethostname()

    def page(request: Request, name: str, **ctx: Any) -> Response:
        ctx.update(app=ktasks_app, actions=allow_actions, token=token, snap=state.snapshot, now=time.time(),
                   host=host, refresh_s=refresh_s)
        return templates.TemplateResponse(request, name, ctx)

    def charts() -> dict[str, str]:
        snap, window = state.snapshot, state.chart_window_s
        now = snap.taken_at or time.time()
        return {"throughput": line_chart("Tasks finished per second", snap.throughput, now, window, "/s"),
                "latency": line_chart("Run time and queued time, p95", snap.latency, now, window, "s"),
                "lag": line_chart("Lag (task topics)", snap.lag, now, window)}

    async def index(request: Request) -> Response:
        return page(request, "index.html", charts=charts())

    async def live(request: Request) -> Response:
        return page(request, "_live.html", charts=charts())

    def _letters(topic: str | None = None) -> list[dlt.StoredDeadLetter]:
        return list(dlt.iter_dead_letters(ktasks_app, dlt.dead_letter_topics(ktasks_app, topic), tail=DLT_TAIL,
                                          idle_timeout_s=10.0))

    def _find(topic: str, partition: int, offset: int) -> dlt.StoredDeadLetter:
        for x in dlt.iter_dead_letters(ktasks_app, [topic], idle_timeout_s=10.0):
            if x.partition == partition and x.offset == offset:
                return x
        raise HTTPException(404, f"no dead letter at {topic}[{partition}]@{offset} (purged?)")

    async def dlq_list(request: Request) -> Response:
        topics = dlt.dead_letter_topics(ktasks_app)
        counts = dlt.pending_counts(ktasks_app, topics)
        sizes = {t: sum(e - s for tp, (s, e) in counts.items() if tp.topic == t) for t in topics}
        letters = sorted(_letters(), key=lambda x: x.timestamp_ms, reverse=True)
        return page(request, "dlq.html", letters=[_letter_view(x) for x in letters], sizes=sizes,
                    tail=DLT_TAIL)

    def _where(request: Request) -> tuple[str, int, int]:
        p = request.path_params
        if p["topic"] not in dlt.dead_letter_topics(ktasks_app):
            raise HTTPException(404, f"{p['topic']!r} is not a dead-letter topic of app {ktasks_app.name}")
        return p["topic"], int(p["partition"]), int(p["offset"])

    async def dlq_detail(request: Request) -> Response:
        x = _find(*_where(request))
        return page(request, "dlq_detail.html", x=_letter_view(x),
                    replays_to=x.origin_topic(ktasks_app.settings.dead_letter_suffix),
                    done=request.query_params.get("done"))

    async def _check_action(request: Request) -> dict[str, Any]:
        if not allow_actions:
            raise HTTPException(403, "actions are off: start the dashboard with --allow-actions")
        form = await request.form()
        if request.method == "POST" and not secrets.compare_digest(str(form.get("token", "")), token):
            raise HTTPException(403, "missing or wrong form token: reload the page and try again")
        return dict(form)

    async def dlq_replay(request: Request) -> Response:
        where = _where(request)
        await _check_action(request)
        x = _find(*where)
        if request.method == "GET":
            return page(request, "confirm.html", what="replay", x=_letter_view(x),
                        replays_to=x.origin_topic(ktasks_app.settings.dead_letter_suffix))
        try:
            meta = dlt.replay(ktasks_app, x).get(timeout=max(ktasks_app.settings.send_timeout_ms / 1000, 5.0))
        except Exception as exc:  # kafka errors and timeouts alike: shown on the page
            raise HTTPException(502, f"replay failed: {type(exc).__name__}: {exc}") from exc
        logger.info("dashboard: replayed %s[%d]@%d to %s[%d]@%d", x.topic, x.partition, x.offset, meta.topic,
                    meta.partition, meta.offset)
        done = f"replayed to {meta.topic}[{meta.partition}]@{meta.offset}"
        return RedirectResponse(f"{request.url.path.rsplit('/', 1)[0]}?{urlencode({'done': done})}", status_code=303)

    async def dlq_purge(request: Request) -> Response:
        topic = request.path_params["topic"]
        if topic not in dlt.dead_letter_topics(ktasks_app):
            raise HTTPException(404, f"{topic!r} is not a dead-letter topic of app {ktasks_app.name}")
        form = await _check_action(request)
        if request.method == "GET":
            bounds = dlt.pending_counts(ktasks_app, [topic])
            return page(request, "confirm.html", what="purge", topic=topic,
                        count=sum(e - s for s, e in bounds.values()),
                        ends=",".join(f"{tp.partition}:{s}:{e}" for tp, (s, e) in sorted(bounds.items())))
        # The ends shown on the confirmation page: records that arrived since are kept.
        bounds = {}
        for part in str(form.get("ends", "")).split(","):
            if part:
                p, s, e = (int(v) for v in part.split(":"))
                bounds[TopicPartition(topic, p)] = (s, e)
        removed = dlt.purge(ktasks_app, [topic], bounds)
        return RedirectResponse(f"/dlq?purged={removed}", status_code=303)

    async def task(request: Request) -> Response:
        task_id = request.query_params.get("id", "").strip()
        found: list[dict[str, Any]] = []
        searched: list[str] = []
        if task_id:
            for path in sorted({str(w.data.get("ledger_path")) for w in state.feed.latest.values()
                                if w.data.get("ledger_path") and w.data.get("host") == host}):
                searched.append(path)
                found.extend({"path": path, "entry": entry} for entry in _ledger_entries(path, task_id))
        return page(request, "task.html", task_id=task_id, found=found, searched=searched)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> Any:
        state.start()
        state.wait_ready(10.0)
        try:
            yield
        finally:
            state.stop()

    routes = [
        Route("/", index), Route("/live", live), Route("/dlq", dlq_list),
        Route("/dlq/{topic}/{partition:int}/{offset:int}", dlq_detail),
        Route("/dlq/{topic}/{partition:int}/{offset:int}/replay", dlq_replay, methods=["GET", "POST"]),
        Route("/dlq/{topic}/purge", dlq_purge, methods=["GET", "POST"]),
        Route("/task", task),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _ledger_entries(path: str, key: str) -> list[dict[str, Any]]:
    """The ledger entries of ``key`` (one per task using it) in the ledger file at ``path``, if it is here."""
    if not os.path.exists(path):
        return []
    from ..ledger import Ledger

    try:
        with Ledger(path) as ledger:
            return [entry.as_dict() for entry in ledger.find(key)]
    except KtasksError as exc:
        logger.warning("reading ledger %s: %s", path, exc)
        return []
