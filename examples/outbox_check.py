"""Drive an outbox example: POST orders (every fifth one fails after its writes), then check the database.

Used by examples/flask_outbox/run.sh and examples/django_outbox/run.sh:

    python ../outbox_check.py http://127.0.0.1:8000 60

Exit status 0 when every committed order got exactly one confirmation and no
rolled-back order got any; 1 otherwise. Reads ``DATABASE_URL``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psycopg


def post(base: str, n: int) -> tuple[str, int]:
    order_id = f"order-{n}"
    body = json.dumps({"order_id": order_id, "total": n * 10, "fail": n % 5 == 4}).encode()
    req = urllib.request.Request(base + "/orders", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return order_id, resp.status
    except urllib.error.HTTPError as exc:
        return order_id, exc.code


def wait_ready(base: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                sys.exit(f"the web app at {base} never answered")
            time.sleep(0.2)


def main() -> int:
    base, count = sys.argv[1], int(sys.argv[2])
    wait_ready(base)
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda n: post(base, n), range(count)))
    committed = {o for o, status in replies if status == 201}
    failed = {o for o, status in replies if status != 201}
    print(f"{len(committed)} orders committed, {len(failed)} requests failed and rolled back")
    deadline = time.monotonic() + 90
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        while True:
            rows = conn.execute("SELECT order_id, count(*) FROM confirmations GROUP BY order_id").fetchall()
            confirmed = dict(rows)
            if set(confirmed) >= committed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        orders = {r[0] for r in conn.execute("SELECT id FROM orders")}
    twice = sorted(o for o, c in confirmed.items() if c > 1)
    missing = sorted(committed - set(confirmed))
    leaked = sorted(set(confirmed) & failed)
    print(f"confirmations: {sum(confirmed.values())} for {len(committed)} committed orders; "
          f"missing {len(missing)}, twice {len(twice)}, for rolled-back orders {len(leaked)}")
    ok = not (missing or twice or leaked) and orders == committed
    print("OK" if ok else f"FAILED: missing={missing[:5]} twice={twice[:5]} leaked={leaked[:5]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
