"""Start the three workers (retriever, generator, monitor) as separate ``ragstream run`` processes.

Used by the demo, the end-to-end tests, the benchmarks and the chaos harness. The supervisor itself lives in
:mod:`workers.supervisor` (``ragstream shadow`` uses it too); :class:`Pipeline` is its name here: environment
added to ``os.environ``, logs ``<log_dir>/<worker>-<n>.log``, ``RuntimeError`` when a worker dies early.
"""

from __future__ import annotations

from workers.supervisor import READY_MARKERS, WORKERS, WorkerProcess
from workers.supervisor import WorkerProcesses as Pipeline

__all__ = ["READY_MARKERS", "WORKERS", "Pipeline", "WorkerProcess"]
