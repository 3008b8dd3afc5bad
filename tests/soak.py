"""Kill soak: SIGKILL a real Snakemake run at seeded random moments and check nothing is lost or let in.

    python tests/soak.py --faults 10 --seed 0 --workdir /tmp/soak            # the tiny config
    python tests/soak.py --faults 3 --reference /tmp/a --output /tmp/out ...  # reuse a run made into /tmp/out

The run (``tests/configs/tiny.yaml`` layered over ``config.yaml`` by default) is started in its own
process group (``start_new_session=True``); at each of ``--faults`` moments, drawn uniformly over the
expected run time with ``random.Random(seed)``, the whole group — Snakemake and every job it runs — is
SIGKILLed (:func:`os.killpg`). After each kill the soak runs ``snakemake --unlock`` and starts again
with ``--rerun-incomplete`` (killed again at the next moment, until every kill is delivered) and lets
the last run finish. The final output directory is then compared byte for byte with an uninterrupted
run's (:func:`differing_files`, which skips the timing files :data:`TIMING`). It prints
``faults survived K/S, files differing D``: K kills after which the next run carried on without an
error, D files that differ from the uninterrupted run (or exist in only one of them).

Each run has its own Snakemake working directory under ``--workdir``, so ``--unlock`` never touches
another run's locks. Importable: :func:`soak` returns a :class:`SoakResult`.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
TIMING = ("logs", "benchmarks", "report/runtime.csv", "report/runtime.png", "run.json")
"""Paths under an output directory that hold wall time, job logs or the record of how the run was
started (run.json: its working directory): the only ones allowed to differ between two runs of the
same config (README "Guarantees")."""


def snakemake_command(config: str | os.PathLike, output_dir: Path, workdir: Path, *extra: str) -> list[str]:
    """The command line of a run of ``config`` (over config.yaml) into ``output_dir``, with its own
    Snakemake working directory ``workdir`` (its .snakemake/: locks, incomplete markers, scripts)."""
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = workdir / "output_dir.yaml"
    overlay.write_text(yaml.safe_dump({"output_dir": str(output_dir)}))
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--cores", "2", "--configfile", str(REPO / "config.yaml"), str(config), str(overlay), *extra]


def run(config: str | os.PathLike, output_dir: Path, workdir: Path, keep_as: Path | None = None,
        timeout: float = 900) -> subprocess.CompletedProcess:
    """An uninterrupted run into ``output_dir``, then renamed to ``keep_as`` (if given: so that the
    next run of the same config — ``output_dir`` included, which the results record in their
    provenance — can go to the same place); raises with Snakemake's stderr tail if it fails."""
    result = subprocess.run(snakemake_command(config, output_dir, workdir), capture_output=True, text=True,
                            timeout=timeout, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"snakemake failed on {config} into {output_dir}:\n{result.stderr[-3000:]}")
    if keep_as is not None:
        output_dir.rename(keep_as)
    return result


def result_files(root: Path) -> dict[str, Path]:
    """Every file under ``root`` by its relative path, except the timing files :data:`TIMING`."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir() or any(rel == t or rel.startswith(t + "/") for t in TIMING):
            continue
        files[rel] = path
    return files


def differing_files(a: Path, b: Path) -> list[str]:
    """Relative paths of the files that differ in bytes between output directories ``a`` and ``b``, or
    exist in only one of them (timing files excepted)."""
    fa, fb = result_files(a), result_files(b)
    return sorted(rel for rel in set(fa) | set(fb)
                  if rel not in fa or rel not in fb or fa[rel].read_bytes() != fb[rel].read_bytes())


def kill_moments(faults: int, seed: int, expected_seconds: float) -> list[float]:
    """``faults`` moments drawn uniformly over (0, expected_seconds), seeded, in order."""
    rng = random.Random(seed)
    return sorted(rng.uniform(0.0, expected_seconds) for _ in range(faults))


@dataclass
class SoakResult:
    """What a soak found: kills delivered and survived, the files differing from the reference."""

    faults: int
    delivered: int = 0
    survived: int = 0
    differing: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        line = f"faults survived {self.survived}/{self.faults}, files differing {len(self.differing)}"
        if self.delivered < self.faults:
            line += f" (only {self.delivered} kills delivered: the run finished first)"
        return line


def _run_until(command: list[str], deadline: float | None) -> tuple[int | None, str]:
    """Run ``command`` in a new session; SIGKILL its process group after ``deadline`` seconds (None:
    never). Returns (exit status, or None when killed; stderr tail)."""
    with open(os.devnull, "w") as devnull:
        log = Path(command[command.index("--directory") + 1]) / "soak-stderr.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(command, stdout=devnull, stderr=err, cwd=REPO, start_new_session=True)
            try:
                proc.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                _wait_for_group_exit(proc.pid)
                return None, ""
    return proc.returncode, log.read_text()[-3000:]


def _wait_for_group_exit(pgid: int, timeout: float = 30.0) -> None:
    """Wait until no process of group ``pgid`` is left (a SIGKILLed group is reaped by init)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def soak(faults: int, seed: int, workdir: Path, config: str | os.PathLike = TINY, reference: Path | None = None,
         expected_seconds: float | None = None, output: Path | None = None, min_gap: float = 3.0) -> SoakResult:
    """Run ``config`` into ``output`` (default ``workdir/out``; it must not exist) with ``faults``
    SIGKILLs of the whole process group at seeded moments, recover each with ``--unlock`` +
    ``--rerun-incomplete``, finish, and compare with ``reference``: an uninterrupted run's output
    directory, made with the same ``output`` path and moved aside (when None, run here into
    ``output`` and moved to ``workdir/reference``, which also measures the expected run time). Gaps
    between kills are at least ``min_gap`` seconds of a run, so each run gets past Snakemake's start-up."""
    workdir = Path(workdir)
    output = Path(output) if output is not None else workdir / "out"
    if reference is None:
        reference = workdir / "reference"
        start = time.monotonic()
        run(config, output, workdir / "reference-wd", keep_as=reference)
        expected_seconds = expected_seconds or time.monotonic() - start
    if not expected_seconds:
        raise ValueError("soak needs expected_seconds when it is given a reference run")
    if output.exists():
        raise FileExistsError(f"the soak's output directory {output} exists; give a fresh one")
    wd = workdir / "killed-wd"
    result = SoakResult(faults)
    moments = kill_moments(faults, seed, expected_seconds)
    gaps = [max(min_gap, b - a) for a, b in zip([0.0, *moments], moments)]
    finished = False
    for gap in [*gaps, None]:  # a run per kill, then one to the end
        rerun = ["--rerun-incomplete"] if result.delivered else []
        status, stderr = _run_until(snakemake_command(config, output, wd, *rerun), gap)
        if status not in (None, 0):  # an error: the kill before it (if any) was not survived
            result.failures.append(stderr)
            break
        result.survived = result.delivered  # this run carried on from every kill so far
        if status == 0:
            finished = True
            break
        result.delivered += 1
        unlock = subprocess.run(snakemake_command(config, output, wd, "--unlock"), capture_output=True, text=True,
                                cwd=REPO)
        if unlock.returncode != 0:
            result.failures.append(unlock.stderr[-3000:])
            break
    if finished:
        result.differing = differing_files(reference, output)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=3, help="SIGKILLs to deliver (S)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--config", default=str(TINY), help="config layered over config.yaml")
    parser.add_argument("--workdir", required=True, help="directory for the runs (created)")
    parser.add_argument("--reference", default=None,
                        help="an uninterrupted run's output directory, moved aside from --output, to compare with")
    parser.add_argument("--output", default=None, help="output_dir of the killed run (default: WORKDIR/out)")
    parser.add_argument("--expected-seconds", type=float, default=None,
                        help="expected run time (needed with --reference; else measured by the reference run)")
    args = parser.parse_args(argv)
    result = soak(args.faults, args.seed, Path(args.workdir), args.config,
                  Path(args.reference) if args.reference else None, args.expected_seconds,
                  Path(args.output) if args.output else None)
    for failure in result.failures:
        print(failure, file=sys.stderr)
    for rel in result.differing:
        print(f"differs: {rel}")
    print(result.summary())
    return 0 if result.survived == result.faults and not result.differing and not result.failures else 1


if __name__ == "__main__":
    sys.exit(main())
