#!/usr/bin/env bash
# The Celery user's project, run end to end: enqueue, drain with `ktasks worker -Q`, show the ledger's
# counts, then the project's own eager-mode unit tests. Needs a broker (KTASKS_BOOTSTRAP_SERVERS,
# default 127.0.0.1:9092) and ktasks installed.
set -euo pipefail
cd "$(dirname "$0")"
export KTASKS_APP=proj.tasks:app                    # like CELERY_APP
export KTASKS_BOOTSTRAP_SERVERS="${KTASKS_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
export SHOP_OUTBOX="${SHOP_OUTBOX:-$PWD/outbox.jsonl}"
queue="${KTASKS_DEFAULT_TOPIC:-shop.tasks}"
emails="${SHOP_EMAIL_QUEUE:-shop.emails}"

python enqueue.py
echo "== ktasks worker -c 2 -Q $queue,$emails --burst"
ktasks worker -c 2 -Q "$queue,$emails" --burst --no-progress
echo "== the ledger (the expired receipt is there, not in the dead-letter topic)"
ktasks ledger stats
echo "== eager-mode unit tests"
python -m pytest -q -p no:cacheprovider tests
