"""Every artifact path of the workflow, written once: the rules, ``diffattr show-attribution``, the
CLI and :mod:`diffattr.integrity` all read this table.

A template is relative to ``output_dir`` and names its wildcards in Snakemake's braces
(``features/{spec}/{pool}/{subset}/seed{seed}/{split}.zarr``). :class:`Layout` joins it to one
output directory, ``Layout(out).features == f"{out}/features/{{spec}}/..."``, and gives each rule's
log and benchmark file, ``{out}/logs/{rule}/{job}.log`` and ``{out}/benchmarks/{rule}/{job}.tsv``
(``{out}/logs/{rule}.log`` for a rule with one job), where ``{job}`` is :data:`JOBS`' key. The same
templates answer "which rule writes this path?" (:func:`producing_rule`): each becomes a regex once,
matched against the end of a path whose output directory is unknown.

Pure Python: no torch, no Snakemake, so the DAG and the CLI import it for free.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class Artifact:
    """One file or directory of the workflow: its :class:`Layout` attribute, its template relative
    to ``output_dir``, and the rule whose job writes it (None: written outside the workflow)."""

    name: str
    template: str
    rule: str | None


MODEL_KEY = "{pool}/{subset}/seed{seed}"
"""The wildcards that name one trained model."""
SPEC_MODEL_KEY = f"{{spec}}/{MODEL_KEY}"
"""One feature spec on one model (rules/common.smk's ``MODEL_KEY``)."""
METHOD_MODEL_KEY = f"{{method}}/{MODEL_KEY}"
"""One method on one of its models."""
RANDOM_CONTROL = "random_removal"
"""Name of the random-removal control in the workflow's paths and tables (an attribution method of
this name is refused by the config check)."""
CF_RUN_KEY = "{cf_method}/s{sample}_k{k}"
"""One counterfactual retraining: a method's top-k of one generated sample removed."""

_A = Artifact
ARTIFACTS: tuple[Artifact, ...] = (
    # rules/data.smk
    _A("data", "data/dataset.zarr", "prepare_data"),
    _A("metadata", "data/metadata.csv", "prepare_data"),
    _A("subset_masks", "subsets/{pool}.zarr", "make_subsets"),
    # rules/train.smk
    _A("base_pipeline", "models/base/pipeline", "pretrain_base"),
    _A("pretrain_log", "models/base/pretrain_log.csv", "pretrain_base"),
    _A("model_dir", f"models/{MODEL_KEY}", "train_model"),
    _A("checkpoint", f"models/{MODEL_KEY}/step{{step}}.safetensors", "train_model"),
    _A("train_log", f"models/{MODEL_KEY}/train_log.csv", "train_model"),
    _A("train_resume", f"resume/{MODEL_KEY}", "train_model"),
    # rules/generate.smk
    _A("generated", "data/generated.zarr", "generate"),
    _A("generated_table", "data/generated.csv", "generate"),
    _A("trajectory", "data/trajectory.zarr", "trajectory"),
    # rules/attribute.smk (an attribute run: a user's model and images)
    _A("imported_model", "models/imported/model.safetensors", "import_model"),
    _A("imported_checkpoint", "models/imported/step{step}.safetensors", "import_checkpoint"),
    _A("query_images", "data/queries.zarr", "prepare_queries"),
    _A("query_table", "data/queries.csv", "prepare_queries"),
    _A("topk_table", "attribution/{method}/{set}_top.csv", "top_attributions"),
    _A("topk_parquet", "attribution/{method}/{set}_top.parquet", "top_attributions"),
    # rules/ground_truth.smk
    _A("measurement_part", "ground_truth/{pool}/part{part}", "measure_outputs"),
    _A("measurement", "ground_truth/{pool}/part{part}/{subset}/seed{seed}.zarr", "measure_outputs"),
    _A("ground_truth", "ground_truth/{pool}.zarr", "gather_ground_truth"),
    _A("reliability", "ground_truth/{pool}_reliability.csv", "gather_ground_truth"),
    # rules/features.smk
    _A("feature_shard", f"features/{SPEC_MODEL_KEY}/{{split}}/shard{{shard}}.zarr", "featurize"),
    _A("features", f"features/{SPEC_MODEL_KEY}/{{split}}.zarr", "gather_features"),
    # rules/kernel.smk
    _A("gram_partial", f"kernels/{SPEC_MODEL_KEY}/gram/shard{{shard}}.zarr", "gram_partial"),
    _A("kernel", f"kernels/{SPEC_MODEL_KEY}/kernel.zarr", "kernel"),
    _A("lambda_curve", f"lambda/{METHOD_MODEL_KEY}.csv", "select_lambda"),
    _A("oracle_curve", f"lambda_oracle/{METHOD_MODEL_KEY}.csv", "oracle_lambda"),
    # rules/score.smk
    _A("scores", "scores/{method}/{set}.zarr", "score"),
    _A("residual", f"residuals/{METHOD_MODEL_KEY}.zarr", "residuals"),
    _A("step_scores", "scores/{method}/trajectory.zarr", "score_trajectory"),
    # rules/evaluate.smk
    _A("method_lds", "eval/lds/{method}.csv", "evaluate_lds"),
    _A("step_lds", "eval/trajectory/{method}.csv", "trajectory_lds"),
    _A("lds_table", "lds.csv", "lds_table"),
    _A("lds_markdown", "lds.md", "lds_table"),
    _A("retraining_curve", "eval/retraining/{method}.csv", "retraining_curve"),
    _A("sweep_table", "sweeps/{sweep}.csv", "sweep_table"),
    # rules/customization.smk
    _A("custom_model", "customization/models/g{group}.safetensors", "customize"),
    _A("custom_images", "customization/images/g{group}.zarr", "customize"),
    _A("custom_log", "customization/models/g{group}_log.csv", "customize"),
    _A("custom_resume", "resume/customization/g{group}", "customize"),
    _A("customization_table", "customization.csv", "customization_eval"),
    _A("customization_markdown", "customization.md", "customization_eval"),
    # rules/counterfactual.smk
    _A("cf_model", f"counterfactual/models/{CF_RUN_KEY}.safetensors", "counterfactual_train"),
    _A("cf_removed", f"counterfactual/removed/{CF_RUN_KEY}.csv", "counterfactual_train"),
    _A("cf_log", f"counterfactual/models/{CF_RUN_KEY}_log.csv", "counterfactual_train"),
    _A("cf_resume", f"resume/counterfactual/{CF_RUN_KEY}", "counterfactual_train"),
    _A("cf_eval", "counterfactual/eval/{cf_method}.csv", "counterfactual_evaluate"),
    _A("counterfactual", "counterfactual.csv", "counterfactual_table"),
    _A("counterfactual_summary", "counterfactual_summary.csv", "counterfactual_table"),
    _A("counterfactual_markdown", "counterfactual.md", "counterfactual_table"),
    # rules/report.smk
    _A("lds_figure", "report/lds.png", "plot_lds"),
    _A("lambda_figure", "report/lambda.png", "plot_lambda"),
    _A("counterfactual_figure", "report/counterfactual.png", "plot_counterfactual"),
    _A("attribution_grid", "report/attributions/{method}/{set}_{sample}.png", "attribution_grids"),
    _A("step_figure", "report/trajectory/{method}.png", "plot_trajectory"),
    _A("sweep_figure", "report/sweeps/{sweep}.png", "plot_sweep"),
    _A("runtime_figure", "report/runtime.png", "plot_runtime"),
    _A("runtime_table", "report/runtime.csv", "plot_runtime"),
    _A("method_runtime", "benchmarks/methods.csv", "plot_runtime"),
    # outside the workflow: `diffattr report` (snakemake --report) and `diffattr show-attribution`
    _A("report_html", "report.html", None),
    _A("attribution_png", "attribution/{method}_{set}_{sample}.png", None),
)
"""The table of contents of ``output_dir``, stage by stage."""
del _A

JOBS: dict[str, str] = {
    "prepare_data": "",
    "make_subsets": "{pool}",
    "pretrain_base": "",
    "train_model": MODEL_KEY,
    "generate": "",
    "trajectory": "",
    "import_model": "",
    "import_checkpoint": "step{step}",
    "prepare_queries": "",
    "top_attributions": "{method}/{set}",
    "measure_outputs": "{pool}/part{part}",
    "gather_ground_truth": "{pool}",
    "featurize": f"{SPEC_MODEL_KEY}/{{split}}/shard{{shard}}",
    "gather_features": f"{SPEC_MODEL_KEY}/{{split}}",
    "gram_partial": f"{SPEC_MODEL_KEY}/shard{{shard}}",
    "kernel": SPEC_MODEL_KEY,
    "select_lambda": METHOD_MODEL_KEY,
    "oracle_lambda": METHOD_MODEL_KEY,
    "score": "{method}/{set}",
    "residuals": METHOD_MODEL_KEY,
    "score_trajectory": "{method}",
    "evaluate_lds": "{method}",
    "trajectory_lds": "{method}",
    "lds_table": "",
    "retraining_curve": "{method}",
    "sweep_table": "{sweep}",
    "customize": "g{group}",
    "customization_eval": "",
    "counterfactual_train": CF_RUN_KEY,
    "counterfactual_evaluate": "{cf_method}",
    "counterfactual_table": "",
    "plot_lds": "",
    "plot_lambda": "",
    "plot_counterfactual": "",
    "attribution_grids": "{method}",
    "plot_trajectory": "{method}",
    "plot_sweep": "{sweep}",
    "plot_runtime": "",
}
"""Rule → the wildcards that name one of its jobs: the path of its log and benchmark files ("":
the rule has one job)."""

IMAGE_STORES = {"train": "data", "val": "data", "gen": "generated", "journey": "trajectory", "query": "query_images"}
"""Image split → the artifact whose store holds it (under the split's own name)."""

ATTRIBUTED_SETS = ("val", "gen", "query")
"""The attributed sets that score stores are written for."""

NUMERIC_WILDCARDS = frozenset({"subset", "seed", "step", "shard", "sample", "k", "group", "part"})
"""Wildcards that are always integers (``\\d+``); every other wildcard is one path segment."""

_BY_NAME = {artifact.name: artifact for artifact in ARTIFACTS}
_WILDCARD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Layout:
    """The artifact paths under one output directory: ``Layout(out).<name>`` is ``out`` joined to
    the template of artifact ``<name>`` of :data:`ARTIFACTS` (wildcards left in braces)."""

    out: str

    def __getattr__(self, name: str) -> str:
        artifact = _BY_NAME.get(name)
        if artifact is None:
            raise AttributeError(f"Layout has no artifact {name!r}")
        return self.path(artifact.template)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_BY_NAME})

    def path(self, template: str) -> str:
        """``template`` (relative to the output directory) under this output directory."""
        return f"{self.out}/{template}"

    def log(self, rule: str) -> str:
        """The log file of a job of ``rule``: ``{out}/logs/{rule}/{job key}.log``."""
        return self.path(_job_file("logs", rule, "log"))

    def benchmark(self, rule: str) -> str:
        """The benchmark file of a job of ``rule``: ``{out}/benchmarks/{rule}/{job key}.tsv``."""
        return self.path(_job_file("benchmarks", rule, "tsv"))

    def image_store(self, split: str) -> str:
        """The store holding the images of ``split`` (train, val, gen or journey)."""
        return getattr(self, IMAGE_STORES[split])


def _job_file(folder: str, rule: str, suffix: str) -> str:
    key = JOBS[rule]  # a KeyError names the unknown rule
    return f"{folder}/{rule}/{key}.{suffix}" if key else f"{folder}/{rule}.{suffix}"


def wildcards(template: str) -> list[str]:
    """The wildcard names of ``template``, in order."""
    return _WILDCARD.findall(template)


def fill(template: str, **values: object) -> str:
    """``template`` with the wildcards named in ``values`` replaced by them and the others kept in
    braces (``fill("s{sample}_k{k}", k=5) == "s{sample}_k5"``)."""
    return _WILDCARD.sub(lambda m: str(values[m[1]]) if m[1] in values else m[0], template)


def template_regex(template: str) -> re.Pattern[str]:
    """A regex matching the end of a path built from ``template``: literal text escaped, a numeric
    wildcard (:data:`NUMERIC_WILDCARDS`) as ``\\d+``, any other as one path segment ``[^/]+``, and
    the template starting at a path segment."""
    parts = _WILDCARD.split(template)  # literal, name, literal, name, ..., literal
    body = "".join(
        re.escape(part) if i % 2 == 0 else (r"\d+" if part in NUMERIC_WILDCARDS else r"[^/]+")
        for i, part in enumerate(parts)
    )
    return re.compile(f"/{body}$")


def literal_length(template: str) -> int:
    """The number of characters of ``template`` outside its wildcards: among templates that match
    one path, the longest literal is the most specific (``scores/{method}/trajectory.zarr`` over
    ``scores/{method}/{set}.zarr``)."""
    return len(_WILDCARD.sub("", template))


@lru_cache(maxsize=1)
def _producers() -> tuple[tuple[re.Pattern[str], Artifact], ...]:
    """Every rule-written artifact's regex, most specific first (ties keep the table's order)."""
    written = [a for a in ARTIFACTS if a.rule is not None]
    ordered = sorted(written, key=lambda a: -literal_length(a.template))
    return tuple((template_regex(a.template), a) for a in ordered)


def producing_artifact(path: str | os.PathLike) -> Artifact | None:
    """The artifact of :data:`ARTIFACTS` that ``path`` is (under any output directory), the most
    specific template first; None when no rule writes such a path."""
    posix = "/" + Path(path).as_posix().rstrip("/")
    return next((artifact for pattern, artifact in _producers() if pattern.search(posix)), None)


def producing_rule(path: str | os.PathLike) -> str | None:
    """The rule whose job writes ``path`` (None if no rule does)."""
    artifact = producing_artifact(path)
    return None if artifact is None else artifact.rule
