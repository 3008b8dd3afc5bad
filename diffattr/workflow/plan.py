"""The workflow's plan: pure functions of a validated config that say which jobs exist and what each
reads — which models to train, each method's typed inputs and params, feature specs and their shards,
kernel forms, λ sweeps, counterfactual runs, and what ``rule all`` delivers.

``rules/common.smk`` builds one ``plan = Plan(config, sweeps, sizes)`` after validation
(:func:`diffattr.config.check_config`); every input or params function of a rule is a method here (or
a one-line call into one), so the DAG's logic is unit-testable in milliseconds without Snakemake
(``tests/test_plan.py``), and :meth:`Plan.job_counts` predicts the dry-run's job table, which a few
real dry-runs check (``tests/test_workflow.py``).

Wildcard-taking methods accept anything with the wildcards as attributes (Snakemake's ``Wildcards``,
or a :class:`types.SimpleNamespace`). Pure Python: no torch, no Snakemake.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from diffattr.config import ConfigError, base_pipeline, feature_checkpoint_step, model_params, resolve_config
from diffattr.counterfactual import counterfactual_samples
from diffattr.methods.registry import method_kind, resolve
from diffattr.schedule import checkpoint_steps
from diffattr.store import SHARD_SIZE, kernel_form, shard_ranges
from diffattr.workflow.layout import RANDOM_CONTROL, Layout, fill

Model = tuple[str, int, int]
"""(pool, subset, seed): one trained model."""


def _model(model: Model) -> dict[str, Any]:
    return dict(zip(("pool", "subset", "seed"), model))


def _wildcards(w: Any) -> dict[str, Any]:
    """A wildcards object (Snakemake's, or a namespace) as a dict."""
    return dict(w.items()) if hasattr(w, "items") else dict(vars(w))


@dataclass(frozen=True)
class Resources:
    """The cluster requests of the config's ``resources`` block: the GPU request of the rules that run
    the model on a device (``gpus: 0``: none), and the partition and account (config, else the
    environment's ``SNAKEMAKE_SLURM_PARTITION`` / ``_ACCOUNT``, else the cluster's defaults)."""

    gpu: dict[str, Any]
    slurm: dict[str, str]

    @classmethod
    def from_config(cls, config: dict[str, Any], environ: os._Environ | dict = os.environ) -> Resources:
        res = config["resources"]
        gpu = {"gpu": res["gpus"]} | ({"gpu_model": res["gpu_model"]} if res.get("gpu_model") else {})
        slurm = {
            "slurm_partition": res.get("slurm_partition") or environ.get("SNAKEMAKE_SLURM_PARTITION"),
            "slurm_account": res.get("slurm_account") or environ.get("SNAKEMAKE_SLURM_ACCOUNT"),
        }
        return cls(gpu, {k: v for k, v in slurm.items() if v})


class Plan:
    """Every job's existence, inputs and params, from a config :func:`check_config` has validated (and
    Snakemake's schema validation has filled with defaults). ``sweeps`` and ``sizes`` are what
    ``check_config`` returned: the sweeps' points and the rows of each split."""

    def __init__(self, config: dict[str, Any], sweeps: dict[str, list[dict[str, Any]]], sizes: dict[str, int]):
        self.config = config
        self.sweeps = sweeps
        self.sizes = {**sizes, "journey": sizes["gen"]}  # one trajectory per generated sample
        self.layout = Layout(config["output_dir"])
        self.resources = Resources.from_config(config)
        self.pools = [p for p, spec in config["subsets"]["pools"].items() if spec["count"] > 0]
        self.sets: list[str] = config["evaluation"]["sets"]
        self.methods: list[str] = config["evaluation"].get("methods") or list(config["methods"])
        self.specs = list(config.get("features", {}))
        self.lds_pool: str = config["evaluation"]["lds"]["pool"]
        self.checkpoint_steps = checkpoint_steps(config["train"]["steps"], config["train"]["checkpoint_fractions"])
        self.cf: dict[str, Any] = config.get("counterfactual") or {"methods": []}
        self.cf_methods = [RANDOM_CONTROL, *self.cf["methods"]] if self.cf["methods"] else []
        """The random-removal control and the methods whose top-k is removed (docs/methods.md §4.5)."""
        self.cf_samples = (counterfactual_samples(self.sizes["gen"], self.cf["count"], self.cf["seed"]).tolist()
                           if self.cf_methods else [])
        self.customization: dict[str, Any] = config.get("customization") or {}
        self.base = base_pipeline(config)
        """The text-to-image base pipeline directory (local, or pretrained by pretrain_base); None: DDPM."""
        self.base_input = [self.base] if self.base else []
        """Input of every job that loads the model: the base pipeline under a LoRA (nothing for a DDPM)."""
        self.attribute: dict[str, Any] = config.get("attribute") or {}
        """An attribute run's block (README "Attribute your own model"); empty: a benchmark run."""
        if self.attribute:  # a user's model: no subset models, ground truth, λ choice or counterfactual
            self.sets = ["query"] * bool(self.attribute.get("queries")) + ["gen"] * bool(self.attribute["generate"])
            self.methods = list(self.attribute["methods"])
            self.pools, self.sweeps, self.customization = [], {}, {}
            self.cf, self.cf_methods, self.cf_samples = {"methods": []}, [], []

    @property
    def image_channels(self) -> int:
        """Channels of the training images (1: gray, 3: RGB), which the queries are converted to."""
        from diffattr.data.sizes import image_shape

        return image_shape(self.config["data"])[2]

    @property
    def data_inputs(self) -> list[str]:
        """The data source's local folder or file, when it has one (prepare_data's input)."""
        path = self.config["data"].get("path")
        return [path] if path else []

    @classmethod
    def of(cls, config: dict[str, Any], schema: dict[str, Any], base: str | os.PathLike = ".") -> Plan:
        """The plan of a raw config (validated, defaults filled and checked in place:
        :func:`diffattr.config.resolve_config`)."""
        return cls(config, *resolve_config(config, schema, base))

    @property
    def select_rule(self) -> dict[str, Any]:
        """``evaluation.select`` (docs/methods.md §4.6), the params of every job that chooses on the
        select pool; absent: :class:`diffattr.choose.SelectSettings`'s defaults."""
        return dict(self.config.get("evaluation", {}).get("select") or {})

    # ---- models -----------------------------------------------------------------------------

    @cached_property
    def custom_groups(self) -> int:
        """AbC customization groups (docs/methods.md §2.16; text_to_image only)."""
        from diffattr.customization import CustomizationConfig

        return CustomizationConfig.from_dict(self.customization).groups if self.customization else 0

    @property
    def pretrains_base(self) -> bool:
        """Whether the DAG pretrains the text-to-image base itself (no local ``pipeline_path``)."""
        return bool(self.base) and not self.config["model"]["text_to_image"].get("pipeline_path")

    def checkpoint(self, pool: str, subset: int, seed: int, step: int | None = None) -> str:
        """A model's checkpoint file (the final one by default; an attribute run: the imported model)."""
        step = self.checkpoint_steps[-1] if step is None else step
        if self.attribute:  # the user's model, or one of the earlier checkpoints it names
            final = step == self.checkpoint_steps[-1]
            return self.layout.imported_model if final else self.layout.imported_checkpoint.format(step=step)
        return self.layout.checkpoint.format(pool=pool, subset=subset, seed=seed, step=step)

    @property
    def generator(self) -> str:
        """The final checkpoint of the full model that generates the "gen" set."""
        return self.checkpoint("full", 0, self.config["generate"]["model_seed"])

    def pool_models(self, pool: str) -> list[tuple[int, int]]:
        """(subset, seed) of every model of a pool."""
        if pool == "full":
            return [(0, s) for s in self.config["full_model"]["seeds"]]
        spec = self.config["subsets"]["pools"][pool]
        return [(k, s) for k in range(spec["count"]) for s in spec["seeds"]]

    # ---- ground truth ------------------------------------------------------------------------

    @property
    def ground_truth(self) -> dict[str, Any]:
        """The ``ground_truth`` block as jobs' params: the draws, without ``models_per_job``, which
        only says how measure_outputs' jobs are cut (the measurements' paths)."""
        return {k: v for k, v in self.config["ground_truth"].items() if k != "models_per_job"}

    @cached_property
    def models_per_job(self) -> int:
        """``ground_truth.models_per_job`` (its default: :class:`diffattr.ground_truth.GroundTruthConfig`'s)."""
        from diffattr.ground_truth import GroundTruthConfig

        return GroundTruthConfig.from_dict(self.config["ground_truth"]).models_per_job

    def measurement_parts(self, pool: str) -> list[list[tuple[int, int]]]:
        """A pool's models in measure_outputs jobs: consecutive runs of ``ground_truth.models_per_job``
        of :meth:`pool_models` (subset-major), so a larger ``count`` fills the last part and adds new
        ones, and a part that re-runs measures only its models without a matching measurement
        (:func:`diffattr.measure.measure_part`)."""
        models, size = self.pool_models(pool), self.models_per_job
        return [models[i:i + size] for i in range(0, len(models), size)]

    def part_models(self, pool: str, part: int | str) -> list[tuple[int, int]]:
        """(subset, seed) of the models one measure_outputs job measures."""
        return self.measurement_parts(pool)[int(part)]

    def part_checkpoints(self, w: Any) -> list[str]:
        """The checkpoints one measure_outputs job reads (wildcards ``pool``, ``part``)."""
        return [self.checkpoint(w.pool, k, s) for k, s in self.part_models(w.pool, w.part)]

    def part_measurements(self, w: Any) -> list[str]:
        """The measurement stores one measure_outputs job writes, in :meth:`part_models`' order."""
        return [self.layout.measurement.format(pool=w.pool, part=w.part, subset=k, seed=s)
                for k, s in self.part_models(w.pool, w.part)]

    def pool_parts(self, w: Any) -> list[str]:
        """The part directories of a pool (wildcard ``pool``): gather_ground_truth's inputs."""
        return [self.layout.measurement_part.format(pool=w.pool, part=i) for i in range(len(self.measurement_parts(w.pool)))]

    def pool_measurements(self, w: Any) -> list[str]:
        """Every model's measurement store of a pool, in :meth:`pool_models`' order (parts are consecutive)."""
        return [self.layout.measurement.format(pool=w.pool, part=i, subset=k, seed=s)
                for i, models in enumerate(self.measurement_parts(w.pool)) for k, s in models]

    def measurement(self, pool: str, subset: int, seed: int) -> str:
        """One model's measurement store, inside the directory of the part that measures it."""
        part = self.pool_models(pool).index((subset, seed)) // self.models_per_job
        return self.layout.measurement.format(pool=pool, part=part, subset=subset, seed=seed)

    # ---- features and kernels ----------------------------------------------------------------

    def set_store(self, split: str) -> str:
        """Image store holding a split (``journey``: the generated samples' trajectories)."""
        return self.layout.image_store(split)

    def feature_step(self, spec: str) -> int:
        """The checkpoint step a feature spec uses (its fraction of training)."""
        return feature_checkpoint_step(self.config, spec)

    def feature_spec(self, w: Any) -> dict[str, Any]:
        """A feature spec as its jobs' params; a "trained"-timestep spec (Diffusion-TracIn) also names
        the training run whose draws it replays (only the full-data models have one)."""
        spec = self.config["features"][w.spec]
        if spec.get("timestep_strategy") != "trained":
            return spec
        if w.pool != "full":
            raise ConfigError(f"Feature spec '{w.spec}' uses trained timesteps, which only the full-data models have.")
        run = {"batch_size": self.config["train"]["batch_size"], "seed": int(w.seed), "step": self.feature_step(w.spec)}
        return spec | {"trained": run}

    def shard_ranges(self, spec: str, split: str) -> list[tuple[int, int]]:
        """The [start, stop) rows of each featurize shard of a split."""
        return shard_ranges(self.sizes[split], self.config["features"][spec].get("shard_size", SHARD_SIZE))

    def kernel_form(self, spec: str) -> str:
        """"primal" (k ≤ N: a k × k Gram from per-shard partials) or "dual" (the N × N kernel)."""
        return kernel_form(self.sizes["train"], self.config["features"][spec]["projection"]["dim"])

    def features(self, spec: str, model: Model, split: str) -> str:
        return self.layout.features.format(spec=spec, split=split, **_model(model))

    def kernel_inputs(self, w: Any) -> dict[str, Any]:
        """A kernel's inputs: the train shards' partial Grams (primal), else the train features (dual)."""
        keys = _wildcards(w)
        if self.kernel_form(w.spec) == "primal":
            n = len(self.shard_ranges(w.spec, "train"))
            return {"partials": [self.layout.gram_partial.format(**keys, shard=i) for i in range(n)]}
        return {"train": self.layout.features.format(**keys, split="train")}

    def feature_shards(self, w: Any) -> list[str]:
        """The shards gather_features concatenates."""
        keys = _wildcards(w)
        return [self.layout.feature_shard.format(**keys, shard=i) for i in range(len(self.shard_ranges(w.spec, w.split)))]

    # ---- methods -----------------------------------------------------------------------------

    def method(self, name: str) -> dict[str, Any]:
        return self.config["methods"][name]

    def kind(self, name: str) -> str:
        return self.method(name)["kind"]

    def method_sets(self, name: str) -> list[str]:
        """The attributed sets a method scores: Journey-TRAK is defined for generated samples only (§2.12);
        a stack, the sets every one of its components scores."""
        method = self.method(name)
        if method.get("query") == "journey":
            return [s for s in self.sets if s == "gen"]
        if "component_scores" in method_kind(method).needs:
            return [s for s in self.sets if all(s in self.method_sets(c) for c in method["methods"])]
        return self.sets

    def query_split(self, name: str, set_name: str) -> str:
        """The feature split of a method's queries on an attributed set."""
        return "journey" if self.method(name).get("query") == "journey" else set_name

    def method_specs(self, name: str) -> list[str]:
        """The feature specs a method reads (a gradient method: one per checkpoint)."""
        specs = self.method(name)["features"]
        return specs if isinstance(specs, list) else [specs]

    def residual_owner(self, name: str, model: Model) -> str:
        """The method whose ``residuals`` job a method's model reads: the first scored method with the
        same residual block on the same model (DAS's weight depends on nothing else, so a projection-seed
        sweep of DAS reuses its base's instead of recomputing it)."""
        block = self.method(name).get("residual")
        return next(m for m in self.scored_methods()
                    if self.method(m).get("residual") == block and model in self.method_models(m))

    def residual_jobs(self) -> set[tuple[str, Model]]:
        """(owner, model) of every residuals job the scored methods read."""
        return {(self.residual_owner(m, model), model) for m in self.scored_methods()
                if "residuals" in method_kind(self.method(m)).stages and self.method(m).get("residual")
                for model in self.method_models(m)}

    def method_models(self, name: str) -> list[Model]:
        """(pool, subset, seed) of the models a kernel method scores with (several: an ensemble)."""
        models = self.method(name)["models"]
        if models["pool"] == "full":
            return [("full", 0, s) for s in self.config["full_model"]["seeds"][: models["count"]]]
        seed = self.config["subsets"]["pools"][models["pool"]]["seeds"][0]
        return [(models["pool"], k, seed) for k in range(models["count"])]

    def method_inputs(self, name: str, set_name: str) -> dict[str, str | list[str]]:
        """The artifacts a method's kind needs (:attr:`MethodKind.needs`), by typed name: ``data``,
        ``generated`` (only for the "gen" set); kernel models → ``kernels``, ``train``, ``queries``,
        ``lambdas``, ``residuals`` (one entry per model, DAS's residual weights or none); feature models
        → ``train``, ``queries`` (one per checkpoint spec); ``masks`` and ``truth`` of the retrain
        pool; ``masks`` and ``members`` of the encoded pool; ``checkpoint`` (and ``base``) of the full
        model. :class:`diffattr.methods.registry.MethodInputs` reads them back in the job."""
        method, needs = self.method(name), method_kind(self.method(name)).needs
        L = self.layout
        inputs: dict[str, str | list[str]] = {}
        if "data" in needs:
            inputs["data"] = L.data
        if "data" in needs and set_name == "query":
            inputs["query_images"] = L.query_images
        if "generated" in needs and set_name == "gen":
            inputs["generated"] = L.generated
        if "kernel_models" in needs:
            spec, models = self.method_specs(name)[0], self.method_models(name)
            inputs["kernels"] = [L.kernel.format(spec=spec, **_model(m)) for m in models]
            inputs["train"] = [self.features(spec, m, "train") for m in models]
            inputs["queries"] = [self.features(spec, m, self.query_split(name, set_name)) for m in models]
            inputs["lambdas"] = [] if self.attribute else [L.lambda_curve.format(method=name, **_model(m)) for m in models]
            inputs["residuals"] = ([L.residual.format(method=self.residual_owner(name, m), **_model(m)) for m in models]
                                   if method.get("residual") else [])
        if "feature_models" in needs:
            model = ("full", 0, self.config["full_model"]["seeds"][0])
            inputs["train"] = [self.features(spec, model, "train") for spec in self.method_specs(name)]
            inputs["queries"] = [self.features(spec, model, set_name) for spec in self.method_specs(name)]
        if "retrain_truth" in needs:
            inputs["masks"] = L.subset_masks.format(pool="retrain")
            inputs["truth"] = L.ground_truth.format(pool="retrain")
        if "encoded_models" in needs:
            pool = self.config["subsets"]["pools"]["encoded"]
            inputs["masks"] = L.subset_masks.format(pool="encoded")
            inputs["members"] = [self.checkpoint("encoded", k, pool["seeds"][0]) for k in range(pool["count"])]
        if "component_scores" in needs:
            inputs["components"] = [L.scores.format(method=c, set=set_name) for c in method["methods"]]
        if "select_truth" in needs:
            inputs["masks"] = L.subset_masks.format(pool="select")
            inputs["truth"] = L.ground_truth.format(pool="select")
        if "full_model" in needs and method.get("encoder", "ddpm") == "ddpm":
            inputs["checkpoint"] = self.checkpoint("full", 0, self.config["full_model"]["seeds"][0])
            if self.base:
                inputs["base"] = self.base
        return inputs

    def method_params(self, name: str) -> dict[str, Any]:
        """A method's config block as its jobs' params, with what the DAG derives for it: TracIn's
        checkpoint weights; the model config of methods that run a model (and the ground truth's
        draws for those that measure losses). :class:`diffattr.methods.registry.ScoreContext` splits
        them apart again in the job, in one place."""
        params, kind = dict(self.method(name)), method_kind(self.method(name))
        if kind.derive:
            params |= resolve(kind.derive)(self, name)
        if {"full_model", "encoded_models"} & set(kind.needs):
            params |= self.model
        if "ground_truth" in kind.needs:
            params["ground_truth"] = self.ground_truth
        return params

    def method_benchmarks(self, name: str) -> list[str]:
        """Benchmark files of a method's own jobs: scoring, λ selection and residuals of its models."""
        L = self.layout
        files = [L.benchmark("score").format(method=name, set=s) for s in self.method_sets(name)]
        if "lambda" in method_kind(self.method(name)).stages and not self.attribute:
            for model in self.method_models(name):
                files.append(L.benchmark("select_lambda").format(method=name, **_model(model)))
                if self.method(name).get("residual") and self.residual_owner(name, model) == name:
                    files.append(L.benchmark("residuals").format(method=name, **_model(model)))
        return files

    def methods_with(self, stage: str) -> list[str]:
        """The evaluated methods whose kind declares an extra DAG ``stage`` (:data:`registry.STAGES`);
        an attribute run has no λ choice on a select pool and no retrained models."""
        if self.attribute and stage in ("lambda", "retraining_curve"):
            return []
        return [m for m in self.methods if stage in method_kind(self.method(m)).stages]

    @property
    def retraining_methods(self) -> list[str]:
        """Methods fitted on retrain-pool models: each also gets its LDS-vs-number-of-models table."""
        return self.methods_with("retraining_curve")

    @property
    def journey_methods(self) -> list[str]:
        """Journey-TRAK methods: their per-step scores and per-step LDS are stored for the report."""
        return [m for m in self.methods if self.method(m).get("query") == "journey"]

    @property
    def oracle_models(self) -> dict[str, list[Model]]:
        """Single-model kernel methods: their λ tuned on the lds pool is a labelled diagnostic."""
        return {m: self.method_models(m) for m in self.methods_with("lambda") if len(self.method_models(m)) == 1}

    @property
    def oracle_curves(self) -> list[str]:
        return [self.layout.oracle_curve.format(method=m, **_model(models[0])) for m, models in self.oracle_models.items()]

    @property
    def lambda_methods(self) -> dict[str, Model]:
        """Kernel methods and the model whose λ sweep (select pool) the report plots."""
        return {m: self.method_models(m)[0] for m in self.methods_with("lambda")}

    @property
    def lds_reference(self) -> str | None:
        """``evaluation.lds.reference``: the method every other is compared with by paired bootstrap;
        None without one or when it is not evaluated (a layered config that drops it)."""
        reference = self.config["evaluation"]["lds"].get("reference")
        return reference if reference in self.methods else None

    def reference_sets(self, name: str) -> list[str]:
        """The sets on which method ``name`` is compared with the reference (none for the reference
        itself, or without one): those both score."""
        ref = self.lds_reference
        if not ref or name == ref:
            return []
        return [s for s in self.method_sets(name) if s in self.method_sets(ref)]

    def sweep_key(self, sweep: str) -> str:
        """The knob (a grid's knobs, " × ") a sweep's table names (:func:`diffattr.sweeps.sweep_key`)."""
        from diffattr.sweeps import sweep_key

        return sweep_key(sweep, self.config["sweeps"][sweep])

    def sweep_rows(self, sweep: str) -> list[tuple[Any, str]]:
        """(value, method) of a sweep table's rows: its points and, for ``select: true``, the selected
        method (:func:`diffattr.sweeps.sweep_rows`)."""
        from diffattr.sweeps import sweep_rows

        return sweep_rows(sweep, self.config["sweeps"][sweep], self.sweeps[sweep])

    def lambda_sweep_inputs(self, pool: str):
        """Inputs of a λ sweep of one model of a kernel method, scored by LDS on ``pool``."""

        def inputs(w: Any) -> dict[str, Any]:
            spec, keys = self.method_specs(w.method)[0], _wildcards(w)
            model = (keys["pool"], int(keys["subset"]), int(keys["seed"]))  # Snakemake's wildcards are str
            return {
                "kernel": self.layout.kernel.format(spec=spec, **_model(model)),
                "train": self.features(spec, model, "train"),
                "queries": [self.features(spec, model, self.query_split(w.method, s)) for s in self.method_sets(w.method)],
                "masks": [self.layout.subset_masks.format(pool=pool)],
                "truths": [self.layout.ground_truth.format(pool=pool)],
                "residuals": ([self.layout.residual.format(**keys | {"method": self.residual_owner(w.method, model)})]
                              if self.method(w.method).get("residual") else []),
            }

        return inputs

    def lambda_sweep_params(self, pool: str) -> dict[str, Any]:
        """Params of a λ sweep: the method's grid and weighting, its sets, the pool, and the rule that
        chooses on it (docs/methods.md §4.6): ``evaluation.select`` on the select pool, the argmax on
        any other (the oracle diagnostic: what that pool itself would pick)."""
        return {
            "grid": lambda w: self.method(w.method)["lambdas"],
            "normalize": lambda w: self.method(w.method).get("normalize", "none"),
            "sets": lambda w: self.method_sets(w.method),
            "pools": [pool],
            "select": self.select_rule if pool == "select" else {"rule": "best"},
        }

    # ---- counterfactual ----------------------------------------------------------------------

    def cf_run(self, w: Any) -> dict[str, Any]:
        """One retraining's removal: the sample, k and (control only) the draw seed; the retraining
        seed is the generating model's."""
        run = {"method": w.cf_method, "sample": int(w.sample), "k": int(w.k)}
        if w.cf_method == RANDOM_CONTROL:
            run["seed"] = self.cf["seed"]
        return run | {"model_seed": self.config["generate"]["model_seed"]}

    def cf_scores(self, w: Any) -> dict[str, str]:
        """The attribution method's scores on the generated set (the control needs none)."""
        if w.cf_method == RANDOM_CONTROL:
            return {}
        return {"scores": self.layout.scores.format(method=w.cf_method, set="gen")}

    def cf_keys(self, cf_method: str) -> list[dict[str, Any]]:
        """One method's retrainings, sample-major."""
        return [{"cf_method": cf_method, "sample": s, "k": k} for s in self.cf_samples for k in self.cf["ks"]]

    def cf_runs(self, w: Any) -> dict[str, list[str]]:
        """Checkpoints and removal tables of one method's retrained models, sample-major."""
        keys = self.cf_keys(w.cf_method)
        return {"models": [self.layout.cf_model.format(**key) for key in keys],
                "removed": [self.layout.cf_removed.format(**key) for key in keys]}

    @property
    def cf_bootstrap(self) -> dict[str, Any]:
        """The counterfactual table's bootstrap over samples (the stage off: nothing)."""
        if not self.cf_methods:
            return {}
        return {"resamples": self.cf["bootstrap_resamples"], "confidence": self.cf["confidence"], "seed": self.cf["seed"]}

    # ---- params shared by several rules ------------------------------------------------------

    @property
    def attribute_checkpoints(self) -> dict[int, dict[str, Any]]:
        """An attribute run's earlier checkpoints (``attribute.checkpoints``) by the training step their
        fraction stands for (round(fraction × train.steps), as a feature spec's ``checkpoint`` maps)."""
        from diffattr.schedule import checkpoint_steps

        entries = self.attribute.get("checkpoints") or []
        steps = checkpoint_steps(self.config["train"]["steps"], [e["fraction"] for e in entries])
        return dict(zip(steps, entries))

    def checkpoint_source(self, w: Any) -> dict[str, Any]:
        """import_checkpoint's inputs for step ``w.step``: the checkpoint's directory (a DDPM), or the
        pipeline and the checkpoint's LoRA file (text-to-image)."""
        entry = self.attribute_checkpoints[int(w.step)]
        if self.attribute.get("lora"):
            return {"model": self.attribute["model"], "lora": [entry["model"]]}
        return {"model": entry["model"], "lora": []}

    @property
    def attribute_lora(self) -> list[str]:
        """An attribute run's LoRA file of a text-to-image model (as given: a file or its directory), else nothing."""
        return [self.attribute["lora"]] if self.attribute.get("lora") else []

    @property
    def model(self) -> dict[str, Any]:
        """The model config every job that builds the model reads."""
        return model_params(self.config)

    @property
    def generate(self) -> dict[str, Any]:
        """The sampler's settings (the generating model's seed is an input, not a param)."""
        return {k: v for k, v in self.config["generate"].items() if k != "model_seed"}

    @property
    def lds(self) -> dict[str, Any]:
        """The LDS settings an evaluation job reads (the pool is its input)."""
        return {k: v for k, v in self.config["evaluation"]["lds"].items() if k != "pool"}

    def customization_params(self, w: Any = None) -> dict[str, Any]:
        """A customization job's params: the model, the customization block and the DDIM sampler."""
        return {**self.model, "customization": self.customization, "generate": self.generate}

    # ---- the report and what `rule all` delivers ---------------------------------------------

    @property
    def report_set(self) -> str:
        """The set the report's attribution grids show (an attribute run: its first set)."""
        return self.sets[0] if self.attribute else self.config["report"]["set"]

    @property
    def report_samples(self) -> list[int]:
        """The report's samples of its set (an attribute run: those its queries have)."""
        return [s for s in self.config["report"]["samples"] if s < self.sizes.get(self.report_set, 0)]

    @property
    def top_tables(self) -> list[str]:
        """An attribute run's deliverables: each method's top-k table (CSV and Parquet) per set."""
        L = self.layout
        return [path.format(method=m, set=s) for m in self.methods for s in self.method_sets(m)
                for path in (L.topk_table, L.topk_parquet)]

    @property
    def report_methods(self) -> list[str]:
        """The methods whose attribution grids the report shows: those configured that ran on its set."""
        chosen = None if self.attribute else self.config["report"]["methods"]
        return [m for m in (chosen or self.methods) if m in self.methods and self.report_set in self.method_sets(m)]

    @property
    def grid(self) -> str:
        """An attribution grid figure of the report's set ({method}, {sample} left as wildcards)."""
        return fill(self.layout.attribution_grid, set=self.report_set)

    @property
    def final_outputs(self) -> list[str]:
        """What the run delivers; the runtime figure waits for all of it."""
        L = self.layout
        if self.attribute:
            return self.top_tables
        return [
            L.lds_table,
            *(L.subset_masks.format(pool=p) for p in self.pools),
            *(L.retraining_curve.format(method=m) for m in self.retraining_methods),
            *(L.step_lds.format(method=m) for m in self.journey_methods),
            *([L.counterfactual] if self.cf_methods else []),
            *(L.sweep_table.format(sweep=s) for s in self.sweeps),
            *([L.customization_markdown] if self.custom_groups else []),
        ]

    @property
    def report_figures(self) -> list[str]:
        L = self.layout
        if self.attribute:
            return [self.grid.format(method=m, sample=s) for m in self.report_methods for s in self.report_samples]
        return [
            L.lds_figure,
            L.runtime_figure,
            *([L.lambda_figure] if self.lambda_methods else []),
            *([L.counterfactual_figure] if self.cf_methods else []),
            *(L.step_figure.format(method=m) for m in self.journey_methods),
            *(L.sweep_figure.format(sweep=s) for s in self.sweeps),
            *(self.grid.format(method=m, sample=s) for m in self.report_methods for s in self.report_samples),
        ]

    def wildcard_constraints(self) -> dict[str, str]:
        """The regex of each wildcard: the config's names, or "none" where a list is empty."""
        import re

        names = lambda items: "|".join(map(re.escape, items)) or "none"  # noqa: E731
        return {
            "pool": "full|lds|select|retrain|encoded", "subset": r"\d+", "seed": r"\d+", "set": "|".join(self.sets),
            "method": names(dict.fromkeys(self.methods + self.cf["methods"])), "spec": names(self.specs),
            "split": "train|val|gen|journey|query", "shard": r"\d+", "cf_method": "|".join(self.cf_methods) or "none",
            "sample": r"\d+", "k": r"\d+", "sweep": names(self.sweeps), "group": r"\d+", "step": r"\d+",
        }

    # ---- the job table -----------------------------------------------------------------------

    def scored_methods(self) -> list[str]:
        """Methods with score jobs: the evaluated ones and those the counterfactual stage removes by."""
        return list(dict.fromkeys(self.methods + self.cf["methods"]))

    def scored_sets(self, name: str) -> list[str]:
        """The sets a method is scored on: its sets if evaluated, else the counterfactual's "gen"."""
        return self.method_sets(name) if name in self.methods else ["gen"]

    def needs(self, name: str) -> tuple[str, ...]:
        return method_kind(self.method(name)).needs

    def feature_jobs(self) -> set[tuple[str, Model, str]]:
        """(spec, model, split) of every features store some job reads: a kernel method's λ sweep
        reads the queries of all its sets, a gradient method those of the sets it is scored on."""
        jobs: set[tuple[str, Model, str]] = set()
        full = ("full", 0, self.config["full_model"]["seeds"][0])
        for m in self.scored_methods():
            if "kernel_models" in self.needs(m):
                spec = self.method_specs(m)[0]
                for model in self.method_models(m):
                    jobs.update((spec, model, split) for split in
                                ("train", *(self.query_split(m, s) for s in self.method_sets(m))))
            if "feature_models" in self.needs(m):
                for spec in self.method_specs(m):
                    jobs.update((spec, full, split) for split in ("train", *self.scored_sets(m)))
        return jobs

    def attribute_job_counts(self) -> dict[str, int]:
        """:meth:`Plan.job_counts` of an attribute run: the imported model, the queries, the features,
        kernels and scores of its methods, their top-k tables and the report's grids."""
        features, kernels = self.feature_jobs(), self.kernel_jobs()
        sets = {m: self.method_sets(m) for m in self.methods}
        counts = {
            "all": 1, "prepare_data": 1, "import_model": 1, "prepare_queries": int("query" in self.sets),
            "import_checkpoint": len({self.feature_step(spec) for spec, _, _ in features} - {self.checkpoint_steps[-1]}),
            "generate": int("gen" in self.sets), "trajectory": int(bool(self.journey_methods)),
            "featurize": sum(len(self.shard_ranges(spec, split)) for spec, _, split in features),
            "gather_features": len(features), "kernel": len(kernels),
            "gram_partial": sum(len(self.shard_ranges(spec, "train")) for spec, _ in kernels if self.kernel_form(spec) == "primal"),
            "residuals": len(self.residual_jobs()),
            "score": sum(len(v) for v in sets.values()), "score_trajectory": len(self.journey_methods),
            "top_attributions": sum(len(v) for v in sets.values()),
            "attribution_grids": len(self.report_methods) if self.report_samples else 0,
        }
        return {rule: n for rule, n in counts.items() if n}

    def kernel_jobs(self) -> set[tuple[str, Model]]:
        """(spec, model) of every kernel: each model of each kernel method."""
        return {(self.method_specs(m)[0], model) for m in self.scored_methods() if "kernel_models" in self.needs(m)
                for model in self.method_models(m)}

    def job_counts(self) -> dict[str, int]:
        """The number of jobs of each rule a dry-run from nothing lists (``rule all`` included): the
        prediction that ``tests/test_workflow.py`` checks against real dry-runs."""
        if self.attribute:
            return self.attribute_job_counts()
        counts: Counter[str] = Counter(all=1, prepare_data=1)
        scored = self.scored_methods()
        kernel_methods = [m for m in scored if "lambda" in method_kind(self.method(m)).stages]
        full = ("full", 0, self.config["full_model"]["seeds"][0])
        truth_pools = {self.lds_pool} | ({"select"} if kernel_methods else set())
        truth_pools |= {"select" for m in scored if "select_truth" in self.needs(m)}
        truth_pools |= {"retrain" for m in scored if "retrain_truth" in self.needs(m)}
        truth_pools |= {"retrain" for m in self.retraining_methods}
        features, kernels = self.feature_jobs(), self.kernel_jobs()
        uses_gen = "gen" in self.sets or bool(self.cf_methods)
        trained = {(p, k, s) for p in truth_pools for k, s in self.pool_models(p)} | {m for _, m, _ in features}
        if any("encoded_models" in self.needs(m) for m in scored):
            pool = self.config["subsets"]["pools"]["encoded"]
            trained |= {("encoded", k, pool["seeds"][0]) for k in range(pool["count"])}
        if any("full_model" in self.needs(m) and self.method(m).get("encoder", "ddpm") == "ddpm" for m in scored):
            trained.add(full)
        if uses_gen or self.custom_groups:
            trained.add(("full", 0, self.config["generate"]["model_seed"]))
        counts["make_subsets"] = len(self.pools)
        counts["pretrain_base"] = int(self.pretrains_base)
        counts["train_model"] = len(trained)
        counts["generate"] = int(uses_gen)
        counts["trajectory"] = int(bool(self.journey_methods))
        counts["measure_outputs"] = sum(len(self.measurement_parts(p)) for p in truth_pools)
        counts["gather_ground_truth"] = len(truth_pools)
        counts["featurize"] = sum(len(self.shard_ranges(spec, split)) for spec, _, split in features)
        counts["gather_features"] = len(features)
        counts["kernel"] = len(kernels)
        counts["gram_partial"] = sum(len(self.shard_ranges(spec, "train")) for spec, _ in kernels
                                     if self.kernel_form(spec) == "primal")
        counts["select_lambda"] = sum(len(self.method_models(m)) for m in kernel_methods)
        counts["oracle_lambda"] = len(self.oracle_models)
        counts["residuals"] = len(self.residual_jobs())
        counts["score"] = sum(len(self.scored_sets(m)) for m in scored)
        counts["score_trajectory"] = counts["trajectory_lds"] = counts["plot_trajectory"] = len(self.journey_methods)
        counts["evaluate_lds"] = len(self.methods)
        counts["retraining_curve"] = len(self.retraining_methods)
        counts["sweep_table"] = counts["plot_sweep"] = len(self.sweeps)
        counts["counterfactual_train"] = sum(len(self.cf_keys(c)) for c in self.cf_methods)
        counts["counterfactual_evaluate"] = len(self.cf_methods)
        counts["counterfactual_table"] = counts["plot_counterfactual"] = int(bool(self.cf_methods))
        counts["customize"] = self.custom_groups
        counts["customization_eval"] = int(bool(self.custom_groups))
        counts["lds_table"] = counts["plot_lds"] = counts["plot_runtime"] = 1
        counts["plot_lambda"] = int(bool(self.lambda_methods))
        counts["attribution_grids"] = len(self.report_methods)
        return {rule: n for rule, n in counts.items() if n}
