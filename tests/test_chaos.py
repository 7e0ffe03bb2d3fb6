"""The small chaos run: real workers killed mid-flight (a worker and a child); nothing is lost.

The same scenario as ``python -m benchmarks.chaos`` (see benchmarks/chaos.py),
smaller and without the broker restart (the session broker is shared, and a
broker of the test's own took up to 80 s with its restart on a loaded machine): 600
tasks, half writing a plain SQLite effect, half writing through the ledger
transaction; 3 workers with ``-c 2``; one worker ``kill -9`` (restarted at
once) and one child ``kill -9`` at fixed points of progress. Everything waits
on conditions with deadlines; nothing here asserts on timing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos import ChaosConfig, ChaosResult, run
from ktasks.settings import SETTINGS

pytestmark = pytest.mark.slow

#: Most records a worker hands one child at once.
MAX_BATCH: int = SETTINGS["max_batch"].default


def _explain(result: ChaosResult) -> str:
    return f"\n{result.summary()}\nlogs and databases: {result.workdir}"


def _check(result: ChaosResult, config: ChaosConfig) -> None:
    """Nothing lost, no ledger-transaction duplicate, plain duplicates bounded."""
    if not result.finished and result.rebalance_commit_failures:
        # Known worker issue (reported from issue 8's chaos run): a commit during a rebalance raises
        # RebalanceInProgressError, which the worker treats as fatal: it dead-letters its finished
        # records as commit-failed and resubscribes, after which task partitions can stay unconsumed.
        pytest.xfail("group stalled after RebalanceInProgressError on commit" + _explain(result))
    assert result.finished, "every task's effect appeared before the deadline" + _explain(result)
    assert not result.plain_missing and not result.tx_missing, "nothing lost" + _explain(result)
    assert result.tx_duplicates == 0, "effects written in the ledger transaction exist once" + _explain(result)
    # A child reports finished tasks (and makes their ledger records durable) per result batch,
    # up to RESULT_FLUSH_S apart, so a kill can redo a batch's worth of finished plain tasks, not
    # just the one running. Never more than the jobs handed to the killed processes:
    batch_ceiling = sum(config.concurrency * MAX_BATCH if e.kind == "kill-worker" else MAX_BATCH
                        for e in result.events)
    assert result.plain_duplicates <= batch_ceiling, \
        "plain duplicates are bounded by the jobs handed to the killed processes" + _explain(result)
    if result.plain_duplicates > result.in_flight_bound:
        # Known worker issue (reported from issue 8's chaos run): the tighter bound, one task per
        # killed child, needs the child to make each success durable before it runs the next task.
        pytest.xfail(f"{result.plain_duplicates} plain duplicates > {result.in_flight_bound} (-c per killed "
                     "worker + 1 per killed child): children buffer ledger successes per result batch")


def test_kills_lose_nothing_and_ledger_transaction_effects_are_written_once(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    config = ChaosConfig(n=600, workers=3, concurrency=2, kills=2, broker_restart=False, seed=20261129,
                         deadline_s=180.0, plain_sleep_ms=10.0, stall_s=45.0)
    result = run(config, tmp_path, bootstrap=kafka_bootstrap, log=print)

    kinds = sorted(e.kind for e in result.events)
    assert kinds == ["kill-child", "kill-worker"], "both kills happened" + _explain(result)
    _check(result, config)

