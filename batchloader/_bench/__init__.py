"""The benchmark behind ``python -m batchloader bench``: our loader against torch's.

Private: the command line and ``benchmarks/run.py`` are its interface.

* :mod:`.workloads` holds the datasets, deterministic and picklable;
* :mod:`.measure` makes one measurement in a fresh process and prints one JSON line;
* :mod:`.processes` starts those processes and samples their memory from outside;
* :mod:`.checks` keeps what a loader delivered and says whether it is right;
* :mod:`.targets` holds the targets (the suite's, and ``--auto``'s goals) and the
  noise rule that judges them: pass, within noise, or FAIL;
* :mod:`.runner` plans the runs, alternates the loaders, checks what they delivered,
  measures again what is too close to call, and takes medians;
* :mod:`.report` prints the tables, writes the JSON and draws the plot;
* :mod:`.memory` and :mod:`.memory_report`: the memory workload
  (``--workloads memory``), what a list-of-dicts dataset costs per worker.

See ``docs/performance.md`` and ``docs/memory.md``.
"""

from __future__ import annotations

__all__: list[str] = []
