"""Helpers of ``benchmarks/peers.py``: the same task for every system, and process tools.

Not named ``benchmarks/peers/``: a package of that name would shadow
``benchmarks/peers.py`` (``python -m benchmarks.peers`` would import the
package). Modules:

* :mod:`.record`: the task body every system runs, and how its records are read back;
* :mod:`.procs`: process trees, their memory, a throwaway redis-server, stopping processes;
* :mod:`.ktasks_app`, :mod:`.celery_app`, :mod:`.dramatiq_app`: each system's app, configured
  from ``BENCH_*`` (and ``KTASKS_*``) environment variables set by the harness;
* :mod:`.bare`: the bare kafka-python consume-and-commit loop.
"""
