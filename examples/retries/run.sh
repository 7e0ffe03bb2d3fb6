#!/usr/bin/env bash
# Retries and the dead-letter topic: enqueue, drain with a --burst worker (it waits for the
# retries too), then list what ended in the dead-letter topic.
# Expects a broker (ktasks dev up) and ktasks on PATH.
set -euo pipefail
cd "$(dirname "$0")"
echo "== enqueueing"
python enqueue.py
echo "== running a worker until the backlog, retries included, is drained"
ktasks worker -A tasks:app -c 2 --burst
echo "== the dead-letter topic (ktasks dlq list -A tasks:app)"
ktasks dlq list -A tasks:app
