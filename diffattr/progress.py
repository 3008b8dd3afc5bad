"""Progress of long jobs (training, featurization, retraining) in their own log files.

Inside a workflow job, stderr is the job's log file (:func:`diffattr.jobs.job`), so the bar and the
log lines go there and Snakemake's own output stays one line per job. :func:`progress` yields a tqdm
bar (count, rate and ETA, redrawn at most every :data:`REFRESH_SECONDS`) and, while it is open, routes
the ``logging`` lines through tqdm so that a log line never lands in the middle of a bar: the job
logs one line per epoch or shard, the bar shows where it is in between.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

REFRESH_SECONDS = 1.0
"""Least time between two redraws of a bar (a 100-second job writes about 100 short updates)."""


@contextlib.contextmanager
def progress(total: int, desc: str, unit: str, initial: int = 0) -> Iterator[Any]:
    """A tqdm bar of ``total`` ``unit`` on the current stderr, starting at ``initial``."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(), tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                                       mininterval=REFRESH_SECONDS, ascii=True, ncols=100) as bar:
        yield bar
