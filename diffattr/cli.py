"""The ``diffattr`` command: a thin front end to the Snakemake workflow and to :mod:`diffattr.show`.

    diffattr run [--config FILE ...] [--profile local|slurm|PATH] [--cores N] [--workdir DIR] [-- SNAKEMAKE ARGS]
                                                        (then, for a whole run, the report: {output_dir}/report.html)
    diffattr dry-run [same options]                     (snakemake -n --quiet rules: the job table)
    diffattr report [--config FILE ...] [--profile ...] [--output FILE]
    diffattr show-attribution --sample N --method M [--set val|gen] [--top K] [--config FILE ...] [--output PNG]

Snakemake runs as ``sys.executable -m snakemake`` in the workflow directory (the one holding the
Snakefile: this checkout by default, ``--workdir`` otherwise). Its ``--configfile`` takes every
argument that follows it, so the command always ends with ``--configfile FILE ...``; targets and
other options passed after ``--`` come first. Config files layer over the workflow's ``config.yaml``
exactly as Snakemake layers them (:func:`merge_configs`).
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffattr.workflow.layout import Layout

REPO = Path(__file__).resolve().parents[1]
"""The checkout this package lives in: the default workflow directory."""
PROFILES = ("local", "slurm")
"""Profiles shipped under ``profiles/`` (``--profile`` also takes a path)."""


class CliError(ValueError):
    """A usage problem, stated in one sentence (exit code 2)."""


def merge_configs(*configs: Mapping[str, Any]) -> dict[str, Any]:
    """Layer configs as Snakemake layers several config files: later values override earlier
    ones, mappings are merged key by key recursively, anything else (lists included) is replaced.
    Returns a new dict; the inputs are not modified."""
    merged: dict[str, Any] = {}
    for config in configs:
        for key, value in config.items():
            if isinstance(value, Mapping):
                base = merged.get(key)
                merged[key] = merge_configs(base if isinstance(base, Mapping) else {}, value)
            else:
                merged[key] = copy.deepcopy(value)
    return merged


def workflow_dir(workdir: str | os.PathLike | None = None) -> Path:
    """The directory holding the Snakefile: ``workdir``, or this package's checkout."""
    path = Path(workdir).resolve() if workdir is not None else REPO
    if not (path / "Snakefile").is_file():
        raise CliError(f"There is no Snakefile in {path}: pass --workdir pointing at the diffattr workflow directory.")
    return path


def resolve_config_files(files: Sequence[str], workdir: Path, cwd: Path | None = None) -> list[Path]:
    """Absolute paths of ``files``: a relative path is looked up in the current directory first,
    then in the workflow directory (where ``config/smoke.yaml`` lives)."""
    cwd = Path.cwd() if cwd is None else cwd
    resolved = []
    for name in files:
        path = Path(name).expanduser()
        candidates = [path] if path.is_absolute() else [cwd / path, workdir / path]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise CliError(f"Config file {name!r} does not exist (looked in {' and '.join(str(c.parent) for c in candidates)}).")
        resolved.append(found.resolve())
    return resolved


def resolve_profile(profile: str, workdir: Path) -> Path:
    """``local`` / ``slurm`` → ``{workdir}/profiles/{name}``; anything else is a profile directory."""
    path = workdir / "profiles" / profile if profile in PROFILES else Path(profile).expanduser().resolve()
    if not (path / "config.yaml").is_file():
        raise CliError(f"Profile {profile!r} has no config.yaml at {path}; use local, slurm or a profile directory.")
    return path


def read_config_file(path: str | os.PathLike, name: str | None = None) -> dict[str, Any]:
    """:func:`diffattr.config.read_config_file`, its refusal as a :class:`CliError`."""
    from diffattr.config import ConfigError, read_config_file as read

    try:
        return read(path, name)
    except ConfigError as error:
        raise CliError(str(error)) from None


def load_config(workdir: Path, configfiles: Sequence[str | os.PathLike],
                names: Sequence[str] | None = None) -> dict[str, Any]:
    """The workflow's ``config.yaml`` (when present) with ``configfiles`` layered over it; each file
    is parsed (:func:`read_config_file`), ``names`` being how refusals name ``configfiles``."""
    base = workdir / "config.yaml"
    names = list(names) if names is not None else [str(f) for f in configfiles]
    files = [*([(base, str(base))] if base.is_file() else []), *zip(configfiles, names)]
    return merge_configs(*(read_config_file(path, name) for path, name in files))


def output_dir(config: Mapping[str, Any], workdir: Path) -> Path:
    """The config's ``output_dir``, relative to the workflow directory as Snakemake reads it."""
    if not config.get("output_dir"):
        raise CliError("The config sets no 'output_dir', so there is nowhere to look for results.")
    return workdir / str(config["output_dir"])


def report_file(config: Mapping[str, Any], workdir: Path) -> Path:
    """Where ``diffattr report`` and a whole ``diffattr run`` write the HTML report (the layout's
    ``report_html`` under :func:`output_dir`)."""
    return Path(Layout(str(output_dir(config, workdir))).report_html)


def snakemake_command(profile: str | os.PathLike, configfiles: Sequence[str | os.PathLike] = (),
                      cores: int | None = None, dry_run: bool = False, report: str | os.PathLike | None = None,
                      extra: Sequence[str] = (), python: str | None = None) -> list[str]:
    """The Snakemake command line: ``python -m snakemake EXTRA --profile P [--cores N] [-n --quiet
    rules] [--report FILE] [--configfile FILE ...]``, with ``--configfile`` and its files last because
    it swallows every argument after it."""
    for arg in extra:
        if arg.split("=", 1)[0] in ("--configfile", "--configfiles"):
            raise CliError("Pass config files with --config before '--', not as a snakemake argument after it.")
    cmd = [python or sys.executable, "-m", "snakemake", *extra, "--profile", str(profile)]
    if cores is not None:
        cmd += ["--cores", str(cores)]
    if dry_run:
        cmd += ["-n", "--quiet", "rules"]
    if report is not None:
        cmd += ["--report", str(report)]
    if configfiles:
        cmd += ["--configfile", *(str(f) for f in configfiles)]
    return cmd


def run_command(cmd: Sequence[str], cwd: Path) -> int:
    """Print ``cmd`` (one shell-quoted line, with its directory) and run it; its exit status.
    Ctrl-C reaches Snakemake too, which is then waited for so it can clean up."""
    print(f"cd {shlex.quote(str(cwd))} && {shlex.join(cmd)}", flush=True)
    proc = subprocess.Popen(list(cmd), cwd=cwd)
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:
            continue
    return code if code >= 0 else 128 - code


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", nargs="+", action="extend", default=[], metavar="FILE",
                        help="config files layered over the workflow's config.yaml, in order")
    parser.add_argument("--workdir", metavar="DIR", help="workflow directory holding the Snakefile (default: this checkout)")


def _workflow_options(parser: argparse.ArgumentParser, cores: bool = True) -> None:
    _common(parser)
    parser.add_argument("--profile", default="local", help="local (default), slurm, or a profile directory")
    if cores:
        parser.add_argument("--cores", type=int, metavar="N", help="cores for local jobs (default: the profile's)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``diffattr`` (Snakemake arguments go after ``--``)."""
    parser = argparse.ArgumentParser(
        prog="diffattr", description="Training-data attribution for diffusion models (a Snakemake workflow).",
        epilog="Arguments after '--' go to snakemake unchanged (targets, --forcerun, ...).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _workflow_options(sub.add_parser("run", help="run the workflow (snakemake)"))
    _workflow_options(sub.add_parser("dry-run", help="list the jobs a run would execute (snakemake -n)"))
    _workflow_options(sub.add_parser("attribute", help="attribute your own model: run a config with an 'attribute' block"))
    export = sub.add_parser("export-model", help="write a run's full model as a diffusers directory (safetensors)")
    _common(export)
    export.add_argument("--out", required=True, metavar="DIR", help="the directory to write (must not exist)")
    export.add_argument("--pipeline", action="store_true", help="a DDPMPipeline directory (default: a UNet2DModel one)")
    report = sub.add_parser("report", help="write Snakemake's HTML report of the last run")
    _workflow_options(report, cores=False)
    report.add_argument("--output", metavar="FILE", help="report file (default: {output_dir}/report.html)")
    ask = sub.add_parser("query", help="explain new images with a finished run: featurize, score, top-k (no DAG)")
    _common(ask)
    ask.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG files of the model's size")
    ask.add_argument("--method", required=True, metavar="M", help="a kernel (TRAK family) or pixel method of the run")
    ask.add_argument("--top", type=int, default=10, metavar="K", help="training images per end (default: 10)")
    ask.add_argument("--png", metavar="DIR", help="also draw one grid PNG per image in DIR")
    ask.add_argument("--prompt", action="append", metavar="TEXT",
                     help="text-to-image: the prompt of the images (once for all, or once per image, in order)")
    ask.add_argument("--run", metavar="DIR", help="the run's output directory (its run.json), instead of --config")
    show = sub.add_parser("show-attribution", help="print and draw the training images that most and least explain one sample")
    _common(show)
    show.add_argument("--sample", type=int, required=True, metavar="N", help="row of the attributed set")
    show.add_argument("--method", required=True, metavar="M", help="a method name of the config's methods block")
    show.add_argument("--set", default="val", metavar="val|gen|query", help="attributed set (default: val; an attribute run's folder: query)")
    show.add_argument("--top", type=int, default=10, metavar="K", help="proponents and opponents to show (default: 10)")
    show.add_argument("--output", metavar="PNG", help="PNG path (default: {output_dir}/attribution/{method}_{set}_{N}.png)")
    return parser


def _snakemake(args: argparse.Namespace, extra: list[str]) -> int:
    """run / dry-run / report, after every config file has parsed. A plain ``run`` (no arguments after ``--``: the whole workflow) that
    succeeds also writes the HTML report to ``{output_dir}/report.html``; a partial run does not,
    since the report describes the whole run (``diffattr report`` writes it when wanted)."""
    workdir = workflow_dir(args.workdir)
    configfiles = resolve_config_files(args.config, workdir)
    config = load_config(workdir, configfiles, args.config)  # a YAML error is named here, not by Snakemake
    profile = resolve_profile(args.profile, workdir)
    if args.command == "attribute" and not config.get("attribute"):
        raise CliError("diffattr attribute needs a config with an 'attribute' block (see config/attribute.yaml).")
    if args.command in ("run", "attribute"):  # before the DAG is built, so a restored output is seen as present
        from diffattr.atomic import describe_sweep, sweep

        out = output_dir(config, workdir)
        if line := describe_sweep(out, sweep(out)):
            print(line, flush=True)
    report = None
    if args.command == "report":
        if args.output:
            report = Path(args.output).expanduser().resolve()
        else:
            report = report_file(config, workdir)
        report.parent.mkdir(parents=True, exist_ok=True)
    cmd = snakemake_command(profile, configfiles, cores=getattr(args, "cores", None),
                            dry_run=args.command == "dry-run", report=report, extra=extra)
    code = run_command(cmd, workdir)
    if args.command in ("run", "attribute") and code == 0 and not extra:
        report = report_file(config, workdir)
        code = run_command(snakemake_command(profile, configfiles, report=report), workdir)
        if code == 0:
            print(f"report: {report}", flush=True)
    return code


def _export_model(args: argparse.Namespace) -> int:
    """export-model: the run's first full-data model, final checkpoint, as a diffusers directory."""
    from diffattr.models.diffusers_dir import export_unet
    from diffattr.schedule import checkpoint_steps

    workdir = Path(args.workdir).resolve() if args.workdir else REPO
    config = load_config(workdir, resolve_config_files(args.config, workdir), args.config)
    train, model = config["train"], config["model"]
    step = checkpoint_steps(train["steps"], train["checkpoint_fractions"])[-1]
    checkpoint = Path(Layout(str(output_dir(config, workdir))).checkpoint.format(
        pool="full", subset=0, seed=config["full_model"]["seeds"][0], step=step))
    out = Path(args.out).expanduser().resolve()
    if not checkpoint.is_file():
        raise CliError(f"No full model at {checkpoint}: run the workflow first (diffattr run).")
    if out.exists():
        raise CliError(f"{out} exists; export-model writes a new directory only.")
    export_unet(checkpoint, model["unet"], model["scheduler"], out, pipeline=args.pipeline)
    print(f"wrote {out}")
    return 0


def _query(args: argparse.Namespace) -> int:
    """query: :func:`diffattr.query.query` of the images against the run the config files describe."""
    import time

    start = time.perf_counter()
    import warnings

    import diffattr.featurize  # noqa: F401  (torch, diffusers: timed as the start-up)
    import diffattr.kernel  # noqa: F401
    from diffattr.config import ConfigError, load_yaml
    from diffattr.query import QueryError, query, run_config
    from diffattr.workflow.plan import Plan

    warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")  # Snakemake's marker in directory outputs

    workdir = Path(args.workdir).resolve() if args.workdir else REPO
    schema = load_yaml(workdir / "schemas" / "config.schema.yaml")
    if args.run and args.config:
        raise CliError("Give the run either as --run DIR or as --config FILE..., not both.")
    try:
        if args.run:  # the run's own record: its merged config and the directory its paths are relative to
            config, base = run_config(args.run)
        else:
            config, base = load_config(workdir, resolve_config_files(args.config, workdir), args.config), workdir
            config["output_dir"] = str(output_dir(config, workdir))  # the run's outputs, wherever this runs from
    except QueryError as error:
        raise CliError(str(error)) from None
    imported = time.perf_counter() - start
    try:
        plan = Plan.of(config, schema, base)
        answer = query(plan, args.method, args.images, args.top, args.png, args.prompt)
    except (ConfigError, QueryError) as error:
        raise CliError(str(error)) from None
    print(answer.table.to_string(index=False))
    for png in answer.pngs:
        print(f"wrote {png}")
    times = {"start-up and imports": imported, **answer.seconds, "total": time.perf_counter() - start}
    print("seconds: " + ", ".join(f"{name} {value:.2f}" for name, value in times.items()))
    return 0


def _show_attribution(args: argparse.Namespace) -> int:
    from diffattr.show import show_attribution

    workdir = Path(args.workdir).resolve() if args.workdir else REPO
    config = load_config(workdir, resolve_config_files(args.config, workdir), args.config)
    png = Path(args.output).expanduser().resolve() if args.output else None
    shown = show_attribution(output_dir(config, workdir), args.method, args.set, args.sample, args.top, png,
                             configured_methods=list(config.get("methods") or {}) or None)
    print(shown.table)
    print(f"\nwrote {shown.png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``diffattr``; returns the exit status (Snakemake's for the workflow commands,
    2 with a one-sentence message on stderr for a usage problem)."""
    from diffattr.show import ShowError

    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its usage message
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        if args.command == "show-attribution":
            if extra:
                raise CliError("show-attribution takes no arguments after '--'.")
            return _show_attribution(args)
        if args.command == "query":
            return _query(args)
        if args.command == "export-model":
            return _export_model(args)
        return _snakemake(args, extra)
    except (CliError, ShowError) as error:
        print(f"diffattr: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
