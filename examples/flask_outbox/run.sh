#!/usr/bin/env bash
# The Flask + SQLAlchemy outbox example, in one command (from anywhere):
#
#   DATABASE_URL=postgresql://user@host/db KTASKS_BOOTSTRAP_SERVERS=127.0.0.1:9092 examples/flask_outbox/run.sh
#
# Starts gunicorn (3 workers) and `ktasks worker --relay`, posts ORDERS orders (every fifth fails after
# writing its order and its task, and rolls back), then checks the database: one confirmation per
# committed order, none for the rolled-back ones. Logs go to $LOG_DIR (a temporary folder by default).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
: "${DATABASE_URL:?set DATABASE_URL=postgresql://user@host/dbname}"
export DATABASE_URL
PORT="${PORT:-8000}"
ORDERS="${ORDERS:-60}"
LOG_DIR="${LOG_DIR:-$(mktemp -d)}"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait || true
}
trap cleanup EXIT

python -c 'import web; web.create_tables()'
gunicorn -w 3 -b "127.0.0.1:$PORT" web:app >"$LOG_DIR/gunicorn.log" 2>&1 &
pids+=($!)
ktasks worker -A shop -c 2 --relay "$DATABASE_URL" >"$LOG_DIR/worker.log" 2>&1 &
pids+=($!)
echo "gunicorn and the worker (with its relay) are starting; logs in $LOG_DIR"
python ../outbox_check.py "http://127.0.0.1:$PORT" "$ORDERS"
