"""The ceiling: a bare kafka-python consume-and-commit loop over the same records.

One process of a consumer group (the harness starts two, as ktasks runs two
children): poll, decode the ktasks envelope, run the task inline, and commit
the offset after the last processed record of each partition every 200 ms
and at the end of every poll batch. No pool, no ledger, no retries::

    python -m benchmarks.peerapps.bare --bootstrap HOST:PORT --topic T --group G
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from ktasks.message import decode

from . import record

COMMIT_INTERVAL_S = 0.2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    args = parser.parse_args(argv)
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    consumer = KafkaConsumer(args.topic, bootstrap_servers=args.bootstrap, group_id=args.group,
                             enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=500)
    done: dict[TopicPartition, int] = {}
    last_commit = time.monotonic()

    def commit() -> None:
        nonlocal last_commit
        if done:
            consumer.commit({tp: OffsetAndMetadata(o + 1, "", -1) for tp, o in done.items()})
            done.clear()
        last_commit = time.monotonic()

    while not stop:
        batch = consumer.poll(timeout_ms=100)
        for tp, records in batch.items():
            for r in records:
                message = decode(r.value)
                record.work(*message.args)
                done[tp] = r.offset
                if time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                    commit()
        commit()
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
