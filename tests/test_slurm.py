"""The smoke workflow through a real single-node SLURM cluster (tests/slurm/up.sh), via
snakemake-executor-plugin-slurm and profiles/slurm: every job must have run as a SLURM job, grouped
jobs must share SLURM jobs, and the results must equal the local run's."""

from __future__ import annotations

import os
import re
import subprocess

import pandas as pd
import pytest

from conftest import REPO, unavailable
from workflow import overlay, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]


CANNOT_INSTALL = 3
"""up.sh's exit status when the SLURM packages cannot be installed (its stderr says why, in apt's words)."""


def up_failure(up: subprocess.CompletedProcess) -> str:
    """The reason up.sh gave for not starting the cluster: its last non-empty stderr line."""
    lines = [line for line in up.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"tests/slurm/up.sh exited {up.returncode} without a message"


@pytest.fixture(scope="session")  # session, like smoke: set up first, so a missing cluster fails in seconds
def cluster():
    if os.geteuid() != 0:
        unavailable("starting a SLURM cluster needs root (apt-get, daemons)")
    up = subprocess.run(["bash", str(REPO / "tests" / "slurm" / "up.sh")], capture_output=True, text=True, timeout=600)
    if up.returncode == CANNOT_INSTALL:
        unavailable(up_failure(up))
    assert up.returncode == 0, up.stdout + up.stderr  # installed, but SLURM did not come up: a real failure
    yield
    subprocess.run(["bash", str(REPO / "tests" / "slurm" / "down.sh")], capture_output=True, text=True, timeout=120)


def test_up_sh_reports_apts_reason_when_it_cannot_install(tmp_path):
    """With no SLURM on PATH and an apt-get that cannot reach its mirror (a stand-in script), up.sh exits
    CANNOT_INSTALL before touching the system and its last line carries apt's own error."""
    fake = tmp_path / "apt-get"
    fake.write_text('#!/bin/sh\necho "Err:1 http://deb.debian.org/debian bookworm InRelease"\n'
                    'echo "E: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease" >&2\nexit 100\n')
    fake.chmod(0o755)
    path = f"{tmp_path}:/usr/bin:/bin"  # Debian's slurmctld, slurmd and munged live in /usr/sbin
    up = subprocess.run(["bash", str(REPO / "tests" / "slurm" / "up.sh")], capture_output=True, text=True,
                        timeout=60, env={**os.environ, "PATH": path})
    assert up.returncode == CANNOT_INSTALL, up.stdout + up.stderr
    assert up_failure(up) == ("up.sh: cannot install SLURM: `apt-get update -qq` failed: Err:1 "
                              "http://deb.debian.org/debian bookworm InRelease|E: Failed to fetch "
                              "http://deb.debian.org/debian/dists/bookworm/InRelease")


def test_smoke_through_slurm_equals_local(cluster, smoke, tmp_path):
    out = tmp_path / "slurm"
    # The spine (data, grouped training, generation, grouped measurement, scoring, LDS) through SLURM; the
    # feature/kernel path adds ~5 dependent SLURM waves (each pays the plugin's status-poll back-off) and
    # runs the same rules, so the local smoke run covers it.
    methods = ["pixel_l2", "random"]
    cfg = overlay(tmp_path, "slurm", {"output_dir": str(out), "resources": {"gpus": 1, "gpu_model": "fake"},
                                      "evaluation": {"methods": methods}, "counterfactual": {"methods": []}})
    # larger groups than the profile's: on one 2-CPU node each SLURM job costs a status-poll round trip
    groups = ["train=32", "measure=32", "featurize=16", "solve=16", "score=16"]
    result = snakemake("--profile", "profiles/slurm", "--group-components", *groups, "--configfile", "config/smoke.yaml",
                       cfg, "--jobs", "8", "--slurm-init-seconds-before-status-checks", "2",
                       env={"SNAKEMAKE_SLURM_PARTITION": "debug"}, timeout=1500)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    block = (REPO / "Snakefile").read_text().split("localrules:")[1].split("\n\n")[0]
    local = set(re.findall(r"^\s+(\w+),", block, re.M))  # the Snakefile's localrules: run on the submitting node
    assert {"make_subsets", "lds_table", "plot_lds"} <= local
    logs = [p for p in (out / "logs").rglob("*.log") if p.relative_to(out / "logs").parts[0].removesuffix(".log") not in local]
    job_ids = {}
    for log in logs:
        m = re.search(r"SLURM_JOB_ID=(\d+)", log.read_text())
        assert m, f"{log} was not written inside a SLURM job"
        job_ids[log] = m.group(1)
    # grouping: the subset trainings share SLURM jobs (group "train", 8 per job)
    train_ids = {v for k, v in job_ids.items() if "/train_model/" in str(k)}
    n_train = sum("/train_model/" in str(k) for k in job_ids)
    assert len(train_ids) < n_train
    # GPU request reached sbatch: the fake GPU was visible to the job
    assert "CUDA_VISIBLE_DEVICES" in (out / "logs" / "train_model" / "full" / "0" / "seed0.log").read_text()
    local_table = pd.read_csv(smoke.out / "lds.csv")
    local_table = local_table[local_table["method"].str.split(" ").str[0].isin([*methods, "ground_truth_split_half"])]
    pd.testing.assert_frame_equal(pd.read_csv(out / "lds.csv"), local_table.reset_index(drop=True),
                                  check_dtype=False)  # the local table's NaN rows (oracle diagnostics) make counts float
