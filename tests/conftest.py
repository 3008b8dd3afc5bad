"""Shared fixtures: tiny model configs and a small digits store."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TINY_UNET = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
}
SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}


def unavailable(reason: str) -> None:
    """Stop a test whose real component (SLURM, Chromium, ...) cannot start: a skip with ``reason``
    on a developer's machine, a failure with ``reason`` under ``CI=true``, where every tier must run."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def train_ddpm(images, unet, scheduler, train_config, seed, checkpoints, log_table, resume_dir):
    """:func:`diffattr.train.train` of a fresh DDPM on uint8 images (the train_model job's path)."""
    from diffattr.data.store import to_model_range
    from diffattr.models.family import fresh_model
    from diffattr.train import train

    model = fresh_model({"unet": unet, "scheduler": scheduler}, seed)
    return train(model, to_model_range(images), None, train_config, seed, checkpoints, log_table, resume_dir)


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    from diffattr.data.prepare import prepare

    root = tmp_path_factory.mktemp("digits")
    prepare({"source": "digits", "n_train": 200, "n_attributed": 30}, str(root / "ds.zarr"), str(root / "meta.csv"))
    return str(root / "ds.zarr")


@dataclass
class Smoke:
    """The smoke config's run, once per test session, in a temporary output directory."""

    out: Path
    config: str
    result: subprocess.CompletedProcess
    seconds: float

    def args(self, *extra_configs: str) -> list[str]:
        return ["--configfile", "config/smoke.yaml", self.config, *extra_configs]


@pytest.fixture(scope="session")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Smoke:
    from workflow import overlay, snakemake

    tmp = tmp_path_factory.mktemp("smoke")
    out = tmp / "results"
    config = overlay(tmp, "out", {"output_dir": str(out)})
    start = time.perf_counter()
    # the timeout is a hang guard only: on a slow shared CI machine the run took 872 s
    result = snakemake("--cores", "2", "--configfile", "config/smoke.yaml", config, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return Smoke(out, config, result, time.perf_counter() - start)


