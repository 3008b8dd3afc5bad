"""What every workflow job does around its work: one log file, one compute thread per job slot.

Measured here: two torch threads per process on a shared 2-core machine slowed some runs 5–20×, so
each job uses exactly its Snakemake ``threads`` (torch, OpenMP and BLAS pools alike) and parallelism
comes from running jobs side by side.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from threadpoolctl import threadpool_limits


def device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``; ``DIFFATTR_DEVICE`` overrides."""
    chosen = os.environ.get("DIFFATTR_DEVICE")
    if chosen:
        return chosen
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def limit_threads(threads: int) -> None:
    """Cap torch (if imported), OpenMP and BLAS thread pools at ``threads``."""
    threads = max(1, int(threads))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    threadpool_limits(limits=threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


@contextlib.contextmanager
def job(smk: Any) -> Iterator[logging.Logger]:
    """Send logging, stdout and stderr to the job's log file and limit compute threads."""
    log_path = str(smk.log[0]) if len(smk.log) else None
    stream = open(log_path, "w", buffering=1) if log_path else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logger = logging.getLogger("diffattr")
    where = [f"{var}={os.environ[var]}" for var in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES") if var in os.environ]
    logger.info("rule %s, threads %d%s", smk.rule, smk.threads, "".join(", " + w for w in where))
    limit_threads(smk.threads)
    try:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            yield logger
    except Exception:
        logger.exception("job failed")
        raise
    finally:
        if log_path:
            stream.close()
