"""The workflow's plan (diffattr/workflow/plan.py) as pure functions of a config, in milliseconds:
the job table of each shipped config, each method's typed inputs and params, the knobs that grow a
pool. tests/test_workflow.py checks that Snakemake's dry-runs list exactly :meth:`Plan.job_counts`."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from diffattr.config import ConfigError
from diffattr.methods.gradient import checkpoint_weights
from diffattr.schedule import checkpoint_steps
from plans import REPO, config_of, fake_artbench, plan_of


def test_the_main_job_plans_the_headline_methods_only(tmp_path):
    """config.yaml alone (issue 17 item 1): the headline methods, 16 + 8 subset models, the TRAK
    ensemble over the 2 full-data seeds and DAS's counterfactual on 6 samples; nothing of the
    benchmark's other stages; the stack and its equal-weights control (issue 18 item 2) and the
    recommended method chosen on select (item 6) add score jobs only."""
    plan = plan_of({"output_dir": str(tmp_path / "out")})
    assert plan.methods == ["pixel_l2", "random", "trak", "dtrak", "trak_ens", "das", "ekfac", "stack", "stack_equal",
                            "recommended"]
    assert plan.job_counts() == {
        "prepare_data": 1, "make_subsets": 2,  # lds, select
        "train_model": 26,  # 2 full-data seeds + 16 lds + 8 select
        "generate": 1, "measure_outputs": 6, "gather_ground_truth": 2,  # lds and select pools, 4 models per job
        "featurize": 12, "gather_features": 12,  # loss × 2 seeds, square, das; × {train, val, gen}
        "kernel": 4, "select_lambda": 5, "oracle_lambda": 3, "residuals": 1,  # trak, dtrak, das + 2 ensemble members
        "score": 20, "evaluate_lds": 10, "lds_table": 1,  # 10 methods × {val, gen}
        "counterfactual_train": 12, "counterfactual_evaluate": 2, "counterfactual_table": 1,  # 6 samples × (das, random)
        "plot_lds": 1, "plot_lambda": 1, "plot_counterfactual": 1, "attribution_grids": 5, "plot_runtime": 1,
        "all": 1,
    }


def test_the_mnist_config_plans_the_main_job_on_16x16_mnist_without_the_counterfactual(tmp_path):
    """config/mnist.yaml over config.yaml (issue 18 item 3): the main job's methods and pools on 1 500
    + 100 MNIST images and 100 generated ones; no counterfactual retraining."""
    plan = plan_of("config/mnist.yaml", {"output_dir": str(tmp_path / "out")})
    assert plan.sizes == {"train": 1500, "val": 100, "gen": 100, "journey": 100}
    assert plan.image_channels == 1 and plan.config["model"]["unet"]["sample_size"] == 16
    counts = plan.job_counts()
    assert counts["train_model"] == 26 and counts["score"] == 20
    assert not {"counterfactual_train", "counterfactual_table"} & set(counts)


def test_benchmark_plan_lists_the_expected_jobs(tmp_path):
    """config/benchmark.yaml over config.yaml: the full table, exactly the jobs the default had before
    the main job was cut down (533), so nothing was lost, plus the two stacks' score and LDS jobs
    (issue 18 item 2, inherited from config.yaml), the three projection-seed sweeps (item 5), the
    recommended method, the two D-TRAK sweeps' selected values and their joint grid (items 1 and 6):
    682 (the grid's one new point: k = 4096 with K = 20), less DAS's seed sweep's 3 residual jobs, which
    share DAS's own, plus the wide stack's 2 score jobs and 1 LDS job: 682; and since measure_outputs
    measures 4 models per job, 54 fewer: 628."""
    assert plan_of("config/benchmark.yaml", {"output_dir": str(tmp_path / "out")}).job_counts() == {
        "prepare_data": 1,
        "make_subsets": 4,  # lds, select, retrain, encoded
        "train_model": 89,  # full model + 32 lds + 8 select + 32 retrain + 16 encoded-ensemble models
        "generate": 1,
        "trajectory": 1,  # DDIM x̂₀ path of the generated samples (Journey-TRAK)
        "measure_outputs": 18,  # lds, select and retrain pools (72 models), 4 per job
        "gather_ground_truth": 3,
        # loss, square × 5 models (full + 4 ensemble) + loss_c25/50/75, das, dtracin(_c50), retrac(_c50) ×
        # the full model, × 3 splits: trak, trak_ens, relatif, renorm_if, grad_*, tracin*, gas share loss
        # + the generated samples' trajectory features of Journey-TRAK (split "journey")
        # + 6 sweep specs (dim 512, 1024, 4096; timesteps 5, 20; dim 4096 with timesteps 20) × 3 splits
        "featurize": 100,  # + 9 seed-sweep specs (loss, square, das × seeds 43, 44, 45) × 3 splits
        "gather_features": 100,
        "gram_partial": 2,  # the sweep's k = 512, 1024 ≤ N: primal form, one train shard each
        "kernel": 26,  # k = 2048 > N = 1597: dual form, no partial Grams (+ 6 + 9 sweep kernels)
        "residuals": 1,  # DAS's training-residual weight: its seed sweep's 3 methods read DAS's own
        "select_lambda": 29,  # 6 single-model kernel methods + (trak_ens, dtrak_ens) × 4 models + 15 sweep methods
        "oracle_lambda": 21,  # the single-model ones (6 + 15 sweeps) on the lds pool: the table's oracle diagnostic
        "score": 99,  # 49 methods × {val, gen} + Journey-TRAK × {gen}
        "score_trajectory": 1,  # Journey-TRAK's per-step scores
        "trajectory_lds": 1,
        "evaluate_lds": 50,
        "retraining_curve": 2,  # empirical influence, datamodels: LDS vs number of retrained models
        "sweep_table": 6,  # dtrak_dim, dtrak_timesteps, dtrak_grid, {trak, dtrak, das}_seeds
        "lds_table": 1,
        "counterfactual_train": 48,  # 12 generated samples × k = 320 × (das, dtrak, trak, random removal)
        "counterfactual_evaluate": 4,
        "counterfactual_table": 1,
        "plot_lds": 1,  # the report's figures
        "plot_lambda": 1,
        "plot_counterfactual": 1,
        "attribution_grids": 7,  # report.methods
        "plot_trajectory": 1,
        "plot_sweep": 6,
        "plot_runtime": 1,
        "all": 1,
    }


def test_text_to_image_plans_list_the_expected_jobs(tmp_path):
    """The embedded text-to-image default and config/artbench2.yaml over a fake ArtBench folder."""
    art, pipeline = fake_artbench(tmp_path)
    layer = {"output_dir": str(tmp_path / "art"), "data": {"path": str(art)},
             "model": {"text_to_image": {"pipeline_path": str(pipeline)}}}
    report = {"plot_lds": 1, "plot_lambda": 1, "plot_runtime": 1, "lds_table": 1, "all": 1}
    assert plan_of("config/text_to_image.yaml", {"output_dir": str(tmp_path / "t2i")}).job_counts() == {
        "prepare_data": 1, "make_subsets": 2, "pretrain_base": 1,  # the base pipeline, pretrained on "base"
        "train_model": 41,  # full LoRA + 32 lds + 8 select
        "generate": 1, "measure_outputs": 10, "gather_ground_truth": 2,  # 40 models, 4 per job
        "featurize": 6, "gather_features": 6,  # loss, square × {train, val, gen}, one shard each
        "kernel": 2, "select_lambda": 2, "oracle_lambda": 2,  # N = 840 < k = 2048: dual form
        "score": 14, "evaluate_lds": 7,  # 7 methods × {val, gen}
        "attribution_grids": 4, **report,
        "customize": 4, "customization_eval": 1,  # AbC: 4 exemplar groups
        "counterfactual_train": 12, "counterfactual_evaluate": 3,  # 4 samples × k = 168 × (dtrak, trak, random)
        "counterfactual_table": 1, "plot_counterfactual": 1,
    }
    assert plan_of("config/artbench2.yaml", layer).job_counts() == {
        "prepare_data": 1, "make_subsets": 2,  # no pretrain_base: the pipeline is given
        "train_model": 201,  # full LoRA + 64 lds × 3 seeds + 8 select
        "generate": 1, "measure_outputs": 50, "gather_ground_truth": 2,  # 200 models, 4 per job
        "featurize": 14,  # (loss, square) × (5 train shards of 1000 + val + gen)
        "gather_features": 6, "gram_partial": 10, "kernel": 2, "select_lambda": 2,  # k = 4096 ≤ N = 5000: primal
        "oracle_lambda": 2,
        "score": 12, "evaluate_lds": 6, "attribution_grids": 3, **report,
    }


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    """The benchmark's plan (config/benchmark.yaml over config.yaml): every method kind is in it."""
    return plan_of("config/benchmark.yaml", {"output_dir": str(tmp_path_factory.mktemp("plan") / "out")})


def test_an_ensemble_method_gets_one_typed_input_per_model(default):
    """trak_ens: 4 retrain-pool models, each its kernel, train and query features and λ curve, in
    model order; no residuals (DAS only); the "val" queries are the val features of each model."""
    inputs = default.method_inputs("trak_ens", "val")
    L, models = default.layout, [("retrain", k, 0) for k in range(4)]
    assert default.method_models("trak_ens") == models
    assert inputs == {
        "kernels": [L.kernel.format(spec="loss", pool=p, subset=k, seed=s) for p, k, s in models],
        "train": [L.features.format(spec="loss", pool=p, subset=k, seed=s, split="train") for p, k, s in models],
        "queries": [L.features.format(spec="loss", pool=p, subset=k, seed=s, split="val") for p, k, s in models],
        "lambdas": [L.lambda_curve.format(method="trak_ens", pool=p, subset=k, seed=s) for p, k, s in models],
        "residuals": [],
    }
    das = default.method_inputs("das", "gen")
    assert das["residuals"] == [L.residual.format(method="das", pool="full", subset=0, seed=0)]


def test_das_variants_share_a_residual_only_when_its_block_is_the_same(tmp_path):
    """The residual weight depends on the residual block and the model alone: the projection-seed
    sweep's DAS methods read DAS's own (score and λ sweep), a DAS with other residual timesteps its own."""
    das = plan_of("config/benchmark.yaml", {"output_dir": str(tmp_path / "out")}).method("das")
    das_t10 = das | {"residual": das["residual"] | {"timesteps": 10}}
    plan = plan_of("config/benchmark.yaml", {"output_dir": str(tmp_path / "out"), "methods": {"das_t10": das_t10}})
    L, full = plan.layout, {"pool": "full", "subset": 0, "seed": 0}
    own = [L.residual.format(method="das", **full)]
    assert plan.method_inputs("das__seed44", "val")["residuals"] == own
    wildcards = SimpleNamespace(method="das__seed44", pool="full", subset="0", seed="0")  # as Snakemake's: str
    sweep = plan.lambda_sweep_inputs("select")(wildcards)
    assert sweep["residuals"] == own
    assert plan.method_inputs("das_t10", "gen")["residuals"] == [L.residual.format(method="das_t10", **full)]
    assert plan.residual_jobs() == {("das", ("full", 0, 0)), ("das_t10", ("full", 0, 0))}
    assert plan.job_counts()["residuals"] == 2


def test_journey_queries_and_sets(default):
    assert default.method_sets("journey_trak") == ["gen"]
    assert default.method_inputs("journey_trak", "gen")["queries"][0].endswith("/journey.zarr")
    assert default.method_sets("trak") == ["val", "gen"]


def test_tracin_weights_are_the_learning_rate_of_each_checkpoint_interval(default):
    """The gradient kind derives its checkpoint weights at DAG time: η_c over the interval each
    checkpoint stands for, from the training recipe (an independent call of checkpoint_weights with
    the steps the config's fractions give)."""
    train = default.config["train"]
    steps = checkpoint_steps(train["steps"], [0.25, 0.5, 0.75, 1.0])
    expected = checkpoint_weights(steps, "learning_rate", train["steps"], train["lr"], train["warmup_fraction"])
    assert default.method_params("tracin_lr")["weights"] == pytest.approx(expected)
    assert default.method_params("tracin")["weights"] == [0.25] * 4
    assert "unet" not in default.method_params("tracin")  # no model param: it reads stored features


def test_model_params_reach_only_the_kinds_that_run_a_model(default):
    assert "unet" in default.method_params("ekfac") and "ground_truth" not in default.method_params("ekfac")
    truth = default.method_params("encoded_ensemble")["ground_truth"]  # the draws, not how measurements are cut
    assert truth == {k: v for k, v in default.config["ground_truth"].items() if k != "models_per_job"} != default.config["ground_truth"]
    assert default.method_params("encoded_ensemble")["unet"] == default.config["model"]["unet"]
    assert "unet" not in default.method_params("trak") and "unet" not in default.method_params("pixel_l2")


def test_kernel_form_follows_k_against_n(default):
    """k ≤ N: a k × k Gram from one partial per train shard (primal); k > N: the N × N kernel from
    the train features (dual)."""
    import math

    n = default.sizes["train"]
    for spec in default.specs:
        dim, shard = default.config["features"][spec]["projection"]["dim"], default.config["features"][spec]["shard_size"]
        w = SimpleNamespace(spec=spec, pool="full", subset=0, seed=0)
        inputs = default.kernel_inputs(w)
        if dim <= n:
            assert default.kernel_form(spec) == "primal" and len(inputs["partials"]) == math.ceil(n / shard)
        else:
            assert default.kernel_form(spec) == "dual" and inputs == {"train": default.features(spec, ("full", 0, 0), "train")}
    assert {default.kernel_form(s) for s in default.specs} == {"primal", "dual"}  # the default config has both


@pytest.mark.parametrize("pool, more", [("lds", 8), ("select", 4)])
def test_a_larger_pool_adds_only_its_models(default, tmp_path, pool, more):
    """Growing a pool adds its new models' training jobs and the measurement jobs of their parts (4
    models each), and nothing else."""
    count = default.config["subsets"]["pools"][pool]["count"]
    grown = plan_of("config/benchmark.yaml",
                    {"output_dir": default.config["output_dir"], "subsets": {"pools": {pool: {"count": count + more}}}})
    before, after = default.job_counts(), grown.job_counts()
    assert {r: after[r] - before[r] for r in after if after[r] != before[r]} == {"train_model": more,
                                                                                 "measure_outputs": more // 4}


@pytest.mark.parametrize("per_job", [1, 3, 4, 7])
def test_measurement_parts_keep_their_models_when_a_pool_grows(tmp_path, per_job):
    """``ground_truth.models_per_job``: every model of a pool is in exactly one part, each part holds
    at most that many, and growing ``count`` (here 10 → 13, two seeds) only fills the last part and
    appends new ones: each earlier part, its models and their store paths stay as they were."""
    def plan(count):
        return plan_of({"output_dir": str(tmp_path / "out"), "ground_truth": {"models_per_job": per_job},
                        "subsets": {"pools": {"lds": {"count": count, "seeds": [0, 1]}}}})

    small, grown = plan(10), plan(13)
    for p, count in ((small, 10), (grown, 13)):
        parts = p.measurement_parts("lds")
        assert sorted(m for part in parts for m in part) == sorted((k, s) for k in range(count) for s in (0, 1))
        assert all(0 < len(part) <= per_job for part in parts) and len(parts) == -(-2 * count // per_job)
        assert p.job_counts()["measure_outputs"] == len(parts) + len(p.measurement_parts("select"))
    old, new = small.measurement_parts("lds"), grown.measurement_parts("lds")
    full = 20 // per_job  # the parts that were full before
    assert new[:full] == old[:full]
    assert new[len(old) - 1][: len(old[-1])] == old[-1]
    assert [small.measurement("lds", k, s) for k, s in small.pool_models("lds")] == \
        [grown.measurement("lds", k, s) for k, s in small.pool_models("lds")]
    assert "models_per_job" not in small.ground_truth and small.ground_truth["timesteps"] == small.config["ground_truth"]["timesteps"]


def test_a_trained_timestep_spec_on_a_subset_model_is_refused(default):
    with pytest.raises(ConfigError, match="trained timesteps"):
        default.feature_spec(SimpleNamespace(spec="dtracin", pool="lds", seed=0))


def test_the_plan_of_every_shipped_config_imports_no_heavy_module(tmp_path):
    """The boundary: building the plans of the shipped configs imports no torch, diffusers, peft,
    transformers or kronfluence (a fresh interpreter's sys.modules)."""
    art, pipeline = fake_artbench(tmp_path)
    code = f"""
import sys
sys.path.insert(0, {str(REPO / 'tests')!r})
from plans import plan_of
out = {{"output_dir": {str(tmp_path / 'out')!r}}}
for layers in ([out], ["config/benchmark.yaml", out], ["config/smoke.yaml", out], ["config/text_to_image.yaml", out],
               ["config/cifar2.yaml", dict(out, data={{"path": {str(tmp_path)!r}}})],
               ["config/artbench2.yaml", dict(out, data={{"path": {str(art)!r}}},
                                             model={{"text_to_image": {{"pipeline_path": {str(pipeline)!r}}}}})]):
    assert plan_of(*layers).job_counts()["all"] == 1
heavy = sorted(m for m in ("torch", "diffusers", "peft", "transformers", "kronfluence", "snakemake") if m in sys.modules)
print("heavy:", heavy)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "heavy: []" in result.stdout, result.stdout


def test_a_spec_without_shard_size_gets_featurize_s_default(tmp_path):
    """A user's feature spec may leave shard_size out: the plan shards by FeatureSpec's default, the
    value the featurize job itself falls back to."""
    from diffattr.featurize import FeatureSpec

    plan = plan_of({"output_dir": str(tmp_path / "out"),
                    "features": {"mine": {"output": "loss", "timesteps": 2, "projection": {"type": "gaussian", "dim": 64, "seed": 0}}},
                    "methods": {"mine_trak": {"kind": "trak", "features": "mine", "models": {"pool": "full", "count": 1},
                                              "lambdas": [1.0]}},
                    "evaluation": {"methods": ["mine_trak"]}, "counterfactual": {"methods": []}, "sweeps": None})
    n, size = plan.sizes["train"], FeatureSpec().shard_size
    assert plan.shard_ranges("mine", "train") == [(a, min(a + size, n)) for a in range(0, n, size)]
