"""The ktasks side of the Flask example: one task, run by `ktasks worker -A shop --relay $DATABASE_URL`."""

import os

import psycopg

from ktasks import App

app = App("shop")


@app.task(name="shop.send_confirmation")
def send_confirmation(order_id: str, total: int) -> None:
    """Stands for an email: records the confirmation, so the example can count them."""
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        conn.execute("INSERT INTO confirmations (order_id, total) VALUES (%s, %s)", (order_id, total))
