"""Flask + SQLAlchemy: an order and its confirmation task commit together, or not at all.

    gunicorn -w 3 web:app          (DATABASE_URL=postgresql://..., KTASKS_BOOTSTRAP_SERVERS=...)
"""

import os

from flask import Flask, jsonify, request
from sqlalchemy import Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ktasks.contrib.sqlalchemy import create_schema, outbox
from shop import app as tasks_app
from shop import send_confirmation

# libpq's URI, as the relay takes it; SQLAlchemy names its driver in the scheme.
engine = create_engine(os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1))


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    total: Mapped[int] = mapped_column(Integer)


class Confirmation(Base):
    __tablename__ = "confirmations"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(String)
    total: Mapped[int] = mapped_column(Integer)


def create_tables() -> None:
    Base.metadata.create_all(engine)
    create_schema(engine)  # ktasks_outbox (and its NOTIFY trigger), ktasks_claims


app = Flask(__name__)


@app.get("/health")
def health():  # type: ignore[no-untyped-def]
    return jsonify(ok=True, pid=os.getpid())


@app.post("/orders")
def create_order():  # type: ignore[no-untyped-def]
    body = request.get_json()
    with Session(engine) as session, session.begin():
        session.add(Order(id=body["order_id"], total=body["total"]))
        entry = outbox(tasks_app, session).delay(send_confirmation, body["order_id"], body["total"])
        if body.get("fail"):
            # Something goes wrong after both writes: the transaction rolls back, and with it the task.
            raise RuntimeError(f"order {body['order_id']} failed after its writes")
    return jsonify(order_id=body["order_id"], task_id=entry.id, pid=os.getpid()), 201
