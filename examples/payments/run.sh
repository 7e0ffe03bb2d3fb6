#!/usr/bin/env bash
# Idempotent payments: enqueue every order twice, drain with a --burst worker, show the payments table.
# Expects a broker (ktasks dev up) and ktasks on PATH.
set -euo pipefail
cd "$(dirname "$0")"
echo "== enqueueing"
python enqueue.py
echo "== running a worker until the backlog is drained"
ktasks worker -A tasks:app -c 2 --burst
echo "== payments recorded in the ledger's database"
python report.py
