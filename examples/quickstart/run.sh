#!/usr/bin/env bash
# The quickstart demo: enqueue tasks, then drain them with a worker in burst mode.
# Expects a broker (make quickstart starts one) and ktasks on PATH.
set -euo pipefail
cd "$(dirname "$0")"
echo "== enqueueing tasks"
python enqueue.py
echo "== running a worker until the backlog is drained (ktasks worker -A tasks:app -c 2 --burst)"
ktasks worker -A tasks:app -c 2 --burst --no-progress
echo "== done: every task above ran and its offset is committed"
