"""Helpers to run the real Snakemake CLI on the repository's workflow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def overlay(tmp_path: Path, name: str, content: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content))
    return str(path)


def snakemake(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run snakemake in the repository root (where config.yaml is) and capture its output."""
    return subprocess.run(
        [*SNAKEMAKE, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def snakemake_concurrently(runs: list[tuple[str, ...]], env: dict | None = None,
                           timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """Several independent Snakemake invocations (dry-runs: they take no lock) at once; CI has 2 cores
    and each spends most of its ~12 s starting Python and building the DAG."""
    procs = [subprocess.Popen([*SNAKEMAKE, *args], cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args in runs]
    results = []
    for proc, args in zip(procs, runs):
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess([*SNAKEMAKE, *args], proc.returncode, out, err))
    return results


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake run or dry-run."""
    section = output.split("Job stats:")[-1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", section, re.M) if m.group(1) != "total"}


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a dry-run would run (group members are listed indented)."""
    jobs = []
    for block in re.split(r"\n(?=[ \t]*(?:local)?rule \w+:)", output):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        if not m:
            continue
        w = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        wildcards = dict(kv.split("=", 1) for kv in w.group(1).split(", ")) if w else {}
        jobs.append((m.group(1), wildcards))
    return jobs


def planned_outputs(output: str) -> list[str]:
    """Every output path of every job a dry-run lists (its ``output:`` lines), without the flags
    Snakemake prints after a path ("… (update)")."""
    return [re.sub(r" \(\w+(?:, \w+)*\)$", "", path)
            for line in re.findall(r"^\s+output: (.*)$", output, re.M) for path in line.split(", ")]


def is_directory_output(path: str) -> bool:
    """Whether an output is one of the rules' ``directory()`` outputs: a zarr store or the pretrained
    base pipeline or a measurement part (diffattr/workflow/layout.py's templates)."""
    return path.endswith(".zarr") or path.endswith("/models/base/pipeline") or re.search(r"/ground_truth/\w+/part\d+$", path) is not None


def fake_finished_runs(runs: list[tuple[str, ...]], timeout: int = 600) -> None:
    """Make each workflow of ``runs`` (Snakemake arguments, disjoint output dirs) look finished, without
    computing anything: every output its dry-run lists is created empty (a directory for the rules'
    ``directory()`` outputs), then ``snakemake --touch --forceall`` touches them in DAG order and
    records each job's params, code and input set as a real run does. A dry-run of a changed knob
    against this state lists what the change re-runs."""
    for result in snakemake_concurrently([("-n", *args) for args in runs], timeout=timeout):
        assert result.returncode == 0, result.stderr[-2000:]
        for path in map(Path, planned_outputs(result.stdout)):
            if is_directory_output(str(path)):
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
    touched = snakemake_concurrently([("--touch", "--forceall", "--cores", "1", *args) for args in runs], timeout=timeout)
    for result in touched:
        assert result.returncode == 0, result.stderr[-2000:]
