"""The real Snakemake workflow: dry-run job lists, the smoke run end to end, partial re-execution
driven by params, restart after jobs killed mid-way. These tests share the session's smoke run
(conftest.py); the re-execution and restart tests change it and put it back as it was."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
import zarr
from safetensors import safe_open
from scipy.stats import spearmanr

from conftest import REPO, Smoke
from plans import fake_artbench, plan_of
from workflow import (
    SNAKEMAKE,
    fake_finished_runs,
    job_counts,
    overlay,
    planned_jobs,
    snakemake,
    snakemake_concurrently,
)

pytestmark = pytest.mark.workflow


def torch_blocker(tmp_path: Path) -> dict:
    """PYTHONPATH entry whose 'torch' fails to import: proves the DAG is built without torch."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch imported while building the DAG')\n")
    return {"PYTHONPATH": str(tmp_path)}


@pytest.mark.parametrize("layers", [(), ("config/benchmark.yaml",)], ids=["main", "benchmark"])
def test_default_dry_run_lists_the_expected_jobs_without_torch(tmp_path, layers):
    """The main job and the benchmark: Snakemake's job table is the plan's (tests/test_plan.py)."""
    out = {"output_dir": str(tmp_path / "out")}
    result = snakemake("-n", "--configfile", *(str(REPO / f) for f in layers), overlay(tmp_path, "out", out),
                       env=torch_blocker(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout) == plan_of(*layers, out).job_counts()


def test_every_shipped_config_dry_runs_in_seconds_without_torch_or_data(tmp_path):
    """smoke, cifar2 (an empty CIFAR folder: the dry-run must not read it), the SLURM and local profiles."""
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    out = overlay(tmp_path, "out", {"output_dir": str(tmp_path / "out")})
    paths = overlay(tmp_path, "paths", {"output_dir": str(tmp_path / "out"), "data": {"path": str(cifar)}})
    runs = [("-n", "--configfile", "config/smoke.yaml", out), ("-n", "--configfile", "config/cifar2.yaml", paths),
            ("-n", "--profile", "profiles/slurm", "--configfile", out), ("-n", "--profile", "profiles/local", "--configfile", out)]
    start = time.perf_counter()
    results = snakemake_concurrently(runs, env=torch_blocker(tmp_path), timeout=120)
    assert time.perf_counter() - start < 60  # four at once on 2 cores
    for result in results:
        assert result.returncode == 0, result.stderr[-2000:]
        assert job_counts(result.stdout)["train_model"] > 0


def test_text_to_image_configs_dry_run_with_the_expected_jobs(tmp_path):
    """The embedded text-to-image default and config/artbench2.yaml (a fake ArtBench folder of empty
    files, as many as its n_train / n_attributed need, and a pipeline directory of empty files named as
    save_pretrained names them: the dry-run reads neither) list the jobs of their settings, without torch."""
    art, pipeline = fake_artbench(tmp_path)
    out = overlay(tmp_path, "out", {"output_dir": str(tmp_path / "t2i")})
    paths = overlay(tmp_path, "paths", {"output_dir": str(tmp_path / "art"), "data": {"path": str(art)},
                                        "model": {"text_to_image": {"pipeline_path": str(pipeline)}}})
    embedded, artbench = snakemake_concurrently(
        [("-n", "--configfile", "config/text_to_image.yaml", out), ("-n", "--configfile", "config/artbench2.yaml", paths)],
        env=torch_blocker(tmp_path), timeout=120)
    assert embedded.returncode == 0, embedded.stderr[-2000:]
    assert artbench.returncode == 0, artbench.stderr[-2000:]
    assert job_counts(embedded.stdout) == plan_of("config/text_to_image.yaml", {"output_dir": str(tmp_path / "t2i")}).job_counts()
    artbench_layer = {"output_dir": str(tmp_path / "art"), "data": {"path": str(art)},
                      "model": {"text_to_image": {"pipeline_path": str(pipeline)}}}
    assert job_counts(artbench.stdout) == plan_of("config/artbench2.yaml", artbench_layer).job_counts()
    assert str(pipeline) in artbench.stdout  # the model jobs read the pipeline as an input


def test_smoke_run_end_to_end(smoke):
    table = pd.read_csv(smoke.out / "lds.csv")
    methods = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())["evaluation"]["methods"]
    assert {*methods, "ground_truth_split_half", "trak [oracle λ, tuned on lds pool]"} <= set(table["method"])
    assert table.loc[table["kind"] != "ceiling", "lds"].notna().all()
    assert set(table["set"]) == {"val", "gen"}
    lds = table.set_index(["method", "set"])["lds"]
    for split in ("val", "gen"):
        assert abs(lds[("random", split)]) < 0.15
        assert lds[("pixel_l2", split)] > lds[("random", split)]
        assert 0 < lds[("ground_truth_split_half", split)] <= 1
        # Both gradient methods beat the control. D-TRAK > TRAK (docs/methods.md §5.1) needs the default's
        # scale (1597 images, 500 steps: val 0.151 vs 0.121); on 300 images and 120 steps TRAK leads.
        assert lds[("trak", split)] > lds[("random", split)]
        assert lds[("dtrak", split)] > lds[("random", split)]
    assert table.loc[table["method"] == "trak", "chosen"].str.contains("(select pool)", regex=False).all()
    assert "| pixel_l2 | val |" in smoke.result.stdout  # the Markdown copy is printed at the end
    assert (smoke.out / "benchmarks" / "train_model" / "full" / "0" / "seed0.tsv").exists()
    # primal kernel path (k = 256 ≤ N = 300): two partial Grams per model were summed
    assert len(list((smoke.out / "kernels" / "loss" / "full" / "0" / "seed0" / "gram").iterdir())) == 2
    # the stack (docs/methods.md §2.19): weights fit on the select pool, its scores Σ w_c·u_c rebuilt
    # with numpy from its components' own stores (u_c: −s_c·τ_c standardised per row)
    from diffattr.scores import read_score_rows, score_attrs, score_shape

    assert table.loc[table["method"] == "stack", "chosen"].str.contains("(nnls on select)", regex=False).all()
    for split in ("val", "gen"):
        path = smoke.out / "scores" / "stack" / f"{split}.zarr"
        attrs = score_attrs(path)
        assert attrs["components"] == ["pixel_l2", "trak", "dtrak", "das"] and abs(sum(attrs["weights"]) - 1) < 1e-9
        rebuilt = 0
        for name, w in zip(attrs["components"], attrs["weights"]):
            part = smoke.out / "scores" / name / f"{split}.zarr"
            v = -int(score_attrs(part)["sign"]) * read_score_rows(part, 0, score_shape(part)[0]).astype(np.float64)
            rebuilt = rebuilt + w * (v - v.mean(1, keepdims=True)) / v.std(1, keepdims=True)
        np.testing.assert_allclose(read_score_rows(path, 0, score_shape(path)[0]), rebuilt, rtol=1e-4, atol=1e-4)
    # the recommended method (§2.20): its scores are, bit for bit, those of the candidate whose select-pool
    # LDS (recomputed here from the stores, the select pool's masks and truth, with scipy) is the best
    from diffattr.ground_truth import read_ground_truth
    from diffattr.subsets import read_pool

    masks = read_pool(str(smoke.out / "subsets" / "select.zarr")).astype(np.float64)
    for split in ("val", "gen"):
        truth = read_ground_truth(str(smoke.out / "ground_truth" / "select.zarr"), split)
        path = smoke.out / "scores" / "recommended" / f"{split}.zarr"
        candidates = score_attrs(path)["candidates"]
        on_select = {}
        for name in candidates:
            part = smoke.out / "scores" / name / f"{split}.zarr"
            pred = int(score_attrs(part)["sign"]) * masks @ read_score_rows(part, 0, score_shape(part)[0]).astype(np.float64).T
            on_select[name] = np.nanmean([spearmanr(pred[:, x], truth[:, x])[0] for x in range(truth.shape[1])])
        chosen = max(on_select, key=on_select.get)
        assert score_attrs(path)["selected"] == chosen, on_select
        winner = smoke.out / "scores" / chosen / f"{split}.zarr"
        np.testing.assert_array_equal(read_score_rows(path, 0, 40), read_score_rows(winner, 0, 40))
        row = table[(table["method"] == "recommended") & (table["set"] == split)].iloc[0]
        assert row["chosen"].startswith(f"{chosen}") and row["lds"] == pytest.approx(lds[(chosen, split)], abs=1e-12)
    # the paired bootstrap against pixel_l2 (evaluation.lds.reference): the difference on all subsets is the
    # difference of the two LDS, its CI brackets it (same draws), and pixel itself has none
    for r in table[table["kind"].isin(["trak", "stack", "select"])].itertuples():
        assert r.reference == "pixel_l2" and r.delta == pytest.approx(lds[(r.method, r.set)] - lds[("pixel_l2", r.set)])
        assert r.delta_low <= r.delta <= r.delta_high
    assert table.loc[table["method"] == "pixel_l2", "delta"].isna().all()


def test_counterfactual_through_the_workflow(smoke):
    """§4.5 on the smoke run: each retrained model left out exactly its sample's top-k of the DAS
    scores (or the control's draw), and the table holds one finite row per (method, sample, k)."""
    from diffattr.counterfactual import RANDOM_CONTROL, counterfactual_samples, parse_removed, random_removal_set
    from diffattr.methods.embedding import EmbeddingConfig, embed, load_encoder

    results = pd.read_csv(smoke.out / "counterfactual.csv")
    samples = counterfactual_samples(40, 2, 42)
    assert sorted(map(tuple, results[["method", "sample", "k"]].values.tolist())) == sorted(
        (m, int(s), 40) for m in ("das", RANDOM_CONTROL) for s in samples)
    assert np.isfinite(results[["pixel_l2", "embedding_cosine", "loss_change"]].to_numpy()).all()
    # each row's pixel L2 and cosine, recomputed from the stored sample and an independent regeneration
    # (diffusers' DDIM from the sample's recorded seed through the retrained checkpoint)
    config = smoke_config()
    assert config["generate"]["eta"] == 0  # what ddim_with_diffusers samples
    full = smoke.out / "models" / "full" / "0" / f"seed{config['generate']['model_seed']}" / f"step{config['train']['steps']}.safetensors"
    stored = np.asarray(zarr.open_group(str(smoke.out / "data" / "generated.zarr"), mode="r")["gen/images"][:])
    seeds = pd.read_csv(smoke.out / "data" / "generated.csv").set_index("index")["seed"]
    encoder_cfg = EmbeddingConfig.from_params({"path": str(full), **config["counterfactual"]["embedding"]})
    encoder = load_encoder(encoder_cfg, config["model"]["unet"], config["model"]["scheduler"])
    for row in results.itertuples():
        model = smoke.out / "counterfactual" / "models" / row.method / f"s{row.sample}_k{row.k}.safetensors"
        regenerated = ddim_with_diffusers(model, config["model"], int(seeds[row.sample]), config["generate"]["steps"])
        x = stored[row.sample].astype(np.float64) / 127.5 - 1  # both 8-bit, on D-TRAK's [−1, 1] scale
        x_new = regenerated.astype(np.float64) / 127.5 - 1
        np.testing.assert_allclose(row.pixel_l2, np.sqrt(((x - x_new) ** 2).sum()), rtol=0.02, atol=0.02)
        e, e_new = embed(np.stack([x, x_new]).transpose(0, 3, 1, 2).astype(np.float32), encoder_cfg, encoder=encoder)
        cosine = e @ e_new / np.linalg.norm(e) / np.linalg.norm(e_new)
        # on 1 − cos (≈ 1e-3 here): a pixel rounded the other way moves it by ~1 %, a wrong cosine by far more
        np.testing.assert_allclose(1 - row.embedding_cosine, 1 - cosine, rtol=0.05, atol=1e-6)
    das = read_scores(smoke.out / "scores" / "das" / "gen.zarr")
    for sample in samples:
        removed = pd.read_csv(smoke.out / "counterfactual" / "removed" / "das" / f"s{sample}_k40.csv")["removed"].item()
        assert set(parse_removed(removed)) == set(np.argsort(-das[sample])[:40])  # sign −1: largest τ
        control = pd.read_csv(smoke.out / "counterfactual" / "removed" / RANDOM_CONTROL / f"s{sample}_k40.csv")
        assert parse_removed(control["removed"].item()).tolist() == random_removal_set(300, 40, 42, int(sample)).tolist()
        with safe_open(str(smoke.out / "counterfactual" / "models" / "das" / f"s{sample}_k40.safetensors"), "pt") as f:
            assert json.loads(f.metadata()["n_train"]) == 260
    assert "Counterfactual (" in smoke.result.stdout and "| das | 40 | 2 |" in smoke.result.stdout


def smoke_config() -> dict:
    """The smoke run's settings: config.yaml with config/smoke.yaml layered over it (blocks merged)."""
    def merge(base: dict, over: dict) -> dict:
        return {**base, **{k: merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                           for k, v in over.items()}}

    return merge(yaml.safe_load((REPO / "config.yaml").read_text()),
                 yaml.safe_load((REPO / "config" / "smoke.yaml").read_text()))


def ddim_with_diffusers(checkpoint: Path, model: dict, seed: int, steps: int) -> np.ndarray:
    """One image (H, W, C) uint8 sampled without diffattr's sampler: diffusers' UNet2DModel with the
    checkpoint's weights and DDIMScheduler (η = 0) from the seed's N(0, I) draw
    (``default_rng(seed).standard_normal``, float32), rounded to 8 bits like a PNG."""
    from diffusers import DDIMScheduler, UNet2DModel
    from safetensors.torch import load_file

    unet = UNet2DModel(**model["unet"])
    unet.load_state_dict(load_file(str(checkpoint)))
    unet.eval()
    scheduler = DDIMScheduler(prediction_type="epsilon", **model["scheduler"])
    scheduler.set_timesteps(steps)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))[None]
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return np.rint(np.clip((x[0].numpy() + 1) * 127.5, 0, 255)).astype(np.uint8).transpose(1, 2, 0)


def changed_jobs(smoke: Smoke, tmp: Path, changes: dict[str, dict]) -> dict[str, list[tuple[str, dict]]]:
    """The jobs a dry-run plans after each change (dry-runs of all changes at once)."""
    runs = [("-n", *smoke.args(overlay(tmp, name, change))) for name, change in changes.items()]
    planned = {}
    for name, result in zip(changes, snakemake_concurrently(runs, timeout=120)):
        assert result.returncode == 0, result.stderr[-2000:]
        planned[name] = [(rule, w) for rule, w in planned_jobs(result.stdout) if rule != "all"]
    return planned


def test_a_changed_knob_reruns_only_what_it_touches(smoke, tmp_path):
    planned = changed_jobs(smoke, tmp_path, {"a": {"methods": {"trak": {"lambdas": [0.01, 1.0]}}},
                                             "b": {"features": {"loss": {"projection": {"dim": 128}}}},
                                             "c": {"evaluation": {"lds": {"bootstrap_resamples": 32}}},
                                             "d": {"counterfactual": {"ks": [40, 60]}},
                                             "e": {"sweeps": {"k": {"method": "trak", "key": "projection.dim",
                                                                    "values": [128, 256]},
                                                              "dtrak_dim": None, "dtrak_timesteps": None}}})
    # (a) one method's λ grid: its λ selection (and oracle diagnostic), scores and evaluation only (and the
    # report's figures of them), and the stack that combines trak's scores (re-fit and re-scored)
    figures = {"plot_lds", "plot_lambda", "plot_runtime"}
    jobs = planned["a"]
    assert {r for r, _ in jobs} == {"select_lambda", "oracle_lambda", "score", "evaluate_lds", "lds_table",
                                    "attribution_grids", *figures}
    assert {w.get("method") for r, w in jobs if r != "lds_table" and r not in figures} == {"trak", "stack", "recommended"}
    assert {r for r, w in jobs if w.get("method") in ("stack", "recommended")} == {"score", "evaluate_lds"}
    # (b) one feature spec's projection dim: that spec's features, kernels and its methods only
    jobs = planned["b"]
    assert {r for r, _ in jobs} == {"featurize", "gather_features", "gram_partial", "kernel", "select_lambda",
                                    "oracle_lambda", "score", "evaluate_lds", "lds_table", "attribution_grids",
                                    "score_trajectory",
                                    "trajectory_lds", "plot_trajectory", *figures}
    assert {w["spec"] for r, w in jobs if "spec" in w} == {"loss"}
    assert {w["method"] for r, w in jobs if "method" in w} == {"trak", "trak_ens", "relatif", "grad_cos", "tracin", "gas",
                                                               "journey_trak", "stack", "recommended"}
    # (c) the LDS bootstrap count: evaluation only
    jobs = planned["c"]
    assert {r for r, _ in jobs} == {"evaluate_lds", "lds_table", "trajectory_lds", "plot_lds", "plot_runtime",
                                    "plot_trajectory"}
    # (d) one more counterfactual k: its retrainings only (k = 40's are kept), then evaluation and table
    jobs = planned["d"]
    assert {r for r, _ in jobs} == {"counterfactual_train", "counterfactual_evaluate", "counterfactual_table",
                                    "plot_counterfactual", "plot_runtime"}
    assert {w["k"] for r, w in jobs if r == "counterfactual_train"} == {"60"}
    assert len([r for r, _ in jobs if r == "counterfactual_train"]) == 4  # 2 samples × (das, random removal)
    # (e) a projection-dim sweep of TRAK (dropping the default config's sweeps): the new dimension's features,
    # kernel and method; 256 is trak itself
    jobs = planned["e"]
    assert {r for r, _ in jobs} == {"featurize", "gather_features", "gram_partial", "kernel", "select_lambda",
                                    "oracle_lambda", "score", "evaluate_lds", "sweep_table", "plot_sweep", "lds_table",
                                    *figures}
    assert {w["spec"] for r, w in jobs if "spec" in w} == {"loss__dim128"}
    assert {w["method"] for r, w in jobs if "method" in w} == {"trak__dim128"}
    never = {"train_model", "measure_outputs", "prepare_data", "generate"}
    # (a) for real: outputs it does not touch keep their mtimes
    untouched = [smoke.out / "scores" / "dtrak" / "val.zarr" / "zarr.json",
                 smoke.out / "models" / "full" / "0" / "seed0" / "step120.safetensors",
                 smoke.out / "eval" / "lds" / "pixel_l2.csv"]
    before = {p: p.stat().st_mtime_ns for p in untouched}
    trak_before = (smoke.out / "eval" / "lds" / "trak.csv").stat().st_mtime_ns
    run = snakemake("--cores", "2", *smoke.args(overlay(tmp_path, "a", {"methods": {"trak": {"lambdas": [0.01, 1.0]}}})))
    assert run.returncode == 0, run.stderr[-2000:]
    assert not never & set(job_counts(run.stderr + run.stdout))
    assert {p: p.stat().st_mtime_ns for p in untouched} == before
    assert (smoke.out / "eval" / "lds" / "trak.csv").stat().st_mtime_ns > trak_before
    # back to the smoke config: only trak's jobs again
    back = snakemake("--cores", "2", *smoke.args())
    assert back.returncode == 0
    assert {p: p.stat().st_mtime_ns for p in untouched} == before


def kill_run_when(ready, args: list[str], timeout: float = 600) -> str:
    """Start snakemake on ``args`` and SIGKILL it with all its jobs (a node failure) once ``ready()``;
    then remove the dead run's lock, as its user would (``--unlock``)."""
    proc = subprocess.Popen([*SNAKEMAKE, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the run ended before the kill point:\n" + proc.communicate()[0][-3000:])
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    output = proc.communicate()[0]
    assert snakemake("--unlock", *args[args.index("--configfile"):], timeout=120).returncode == 0
    return output


def mid_bar(log_text: str) -> bool:
    """Whether a job's progress bar (diffattr.progress) shows it part-way: "| 32/160 [" with 0 < 32 < 160."""
    return any(0 < int(n) < int(total) for n, total in re.findall(r"\| (\d+)/(\d+) \[", log_text))


def read_scores(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(path), mode="r")["scores"][:])


def test_killed_jobs_restart_and_reproduce_the_uninterrupted_run(smoke, tmp_path):
    out = smoke.out
    scores = {s: out / "scores" / "dtrak" / f"{s}.zarr" for s in ("val", "gen")}
    reference = {s: read_scores(p) for s, p in scores.items()}
    truth = out / "ground_truth" / "lds.zarr"
    ref_truth = np.asarray(zarr.open_group(str(truth), mode="r")["val/y"][:])
    train = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())["train"]

    # a subset training dies after it saved its first resume state
    model_dir = out / "models" / "lds" / "3" / "seed0"
    shutil.rmtree(model_dir)
    resume_state = out / "resume" / "lds" / "3" / "seed0" / "state.safetensors"
    # (the target goes first: --configfile takes every argument after it)
    kill_run_when(resume_state.exists, [str(model_dir / "train_log.csv"), "--cores", "1", *smoke.args()])
    assert not (model_dir / "train_log.csv").exists()

    # a featurization job dies mid-shard: no shard, so no completion marker, may be left
    shard = out / "features" / "square" / "full" / "0" / "seed0" / "train" / "shard0.zarr"
    shutil.rmtree(shard)
    log = out / "logs" / "featurize" / "square" / "full" / "0" / "seed0" / "train" / "shard0.log"
    log.unlink()
    # one row per batch makes the shard's loop last seconds on any CPU (five batches of 32 can end
    # before the bar's first redraw); the restart below featurizes it again with the smoke config
    slow = overlay(tmp_path, "slow", {"features": {"square": {"batch_size": 1}}})
    kill_run_when(lambda: log.exists() and mid_bar(log.read_text()), [str(shard), "--cores", "1", *smoke.args(slow)])
    assert not (shard / "complete.json").exists()

    # restart both, then bring what depends on them up to date (newer inputs: Snakemake's mtime trigger)
    before = {s: (p / "zarr.json").stat().st_mtime_ns for s, p in scores.items()}
    rerun = snakemake(str(model_dir / "train_log.csv"), str(shard), "--cores", "2", "--rerun-incomplete", *smoke.args())
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    downstream = snakemake(*map(str, scores.values()), str(truth), "--cores", "2", *smoke.args())
    assert downstream.returncode == 0, downstream.stderr[-3000:]
    train_log = (out / "logs" / "train_model" / "lds" / "3" / "seed0.log").read_text()
    assert f"resuming from step {train['resume_every']} of {train['steps']}" in train_log
    assert not resume_state.exists()
    for s, path in scores.items():
        assert (path / "zarr.json").stat().st_mtime_ns > before[s]  # recomputed from the restarted jobs
        np.testing.assert_array_equal(read_scores(path), reference[s])
    np.testing.assert_array_equal(np.asarray(zarr.open_group(str(truth), mode="r")["val/y"][:]), ref_truth)


def test_model_based_methods_get_the_full_model_through_the_workflow(smoke, tmp_path):
    """influence (§2.8) and EK-FAC (§2.9) run as score jobs on the smoke run's full model: their
    inputs (checkpoint) and params (model config) come from the DAG (sizes cut to seconds here).
    Journey-TRAK (§2.12) runs from the trajectory to its per-step LDS: gen only, and the mean of its
    per-step scores is its score (the query feature is the per-step features' mean)."""
    tiny = overlay(tmp_path, "tiny", {
        "evaluation": {"methods": ["influence_lissa", "ekfac", "journey_trak"]},
        "methods": {"influence_lissa": {"lissa_depth": 2, "power_iterations": 2, "timesteps": 1, "hvp_vectors": 40},
                    "ekfac": {"fit_draws": 1, "train_draws": 1, "query_draws": 1}}})
    targets = [str(smoke.out / "scores" / m / "val.zarr") for m in ("influence_lissa", "ekfac")]
    journey = [smoke.out / "eval" / "lds" / "journey_trak.csv", smoke.out / "eval" / "trajectory" / "journey_trak.csv"]
    result = snakemake(*targets, *map(str, journey), "--cores", "2", *smoke.args(tiny))
    assert result.returncode == 0, result.stderr[-3000:]
    lds, steps = pd.read_csv(journey[0]), pd.read_csv(journey[1])
    assert list(lds["set"]) == ["gen"] and not (smoke.out / "scores" / "journey_trak" / "val.zarr").exists()
    assert list(steps["timestep"]) == list(range(900, -1, -100))
    trajectory = zarr.open_group(str(smoke.out / "scores" / "journey_trak" / "trajectory.zarr"), mode="r")
    per_step, sign = np.asarray(trajectory["scores"][:]), trajectory.attrs["sign"]
    assert sign == -1  # TRAK's scores: larger means "helps"
    # each step's LDS, recomputed with scipy from the stored masks, ground truth and that step's scores
    pool = smoke_config()["evaluation"]["lds"]["pool"]
    masks = np.asarray(zarr.open_group(str(smoke.out / "subsets" / f"{pool}.zarr"), mode="r")["masks"][:]).astype(np.float64)
    truth = np.asarray(zarr.open_group(str(smoke.out / "ground_truth" / f"{pool}.zarr"), mode="r")["gen/y"][:]).mean(axis=0)
    assert len(per_step) == len(steps)
    for scores, lds_step in zip(per_step, steps["lds"]):
        predicted = masks @ (sign * scores.astype(np.float64)).T  # P = A·(s·τ)ᵀ
        expected = np.nanmean([spearmanr(predicted[:, q], truth[:, q]).statistic for q in range(truth.shape[1])])
        assert lds_step == pytest.approx(expected, abs=1e-6)
    np.testing.assert_allclose(per_step.mean(axis=0), read_scores(smoke.out / "scores" / "journey_trak" / "gen.zarr"),
                               rtol=1e-4, atol=1e-6 * np.abs(per_step).max())
    for target in targets:
        scores = read_scores(Path(target))
        assert scores.shape == (40, 300) and np.isfinite(scores).all()
        assert zarr.open_group(target, mode="r").attrs["sign"] == -1


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, ...]]:
    """Finished-looking runs of the default config and of the text-to-image default (every output
    created empty and ``--touch``ed, ~1 min, no compute): the Snakemake arguments of each."""
    tmp = tmp_path_factory.mktemp("finished")
    runs = {"default": ("--configfile", overlay(tmp, "default", {"output_dir": str(tmp / "default")})),
            "text_to_image": ("--configfile", "config/text_to_image.yaml",
                              overlay(tmp, "t2i", {"output_dir": str(tmp / "t2i")}))}
    fake_finished_runs(list(runs.values()))
    return runs


def planned_after(runs: dict[str, tuple[str, ...]]) -> dict[str, list[tuple[str, dict]]]:
    """The jobs (rule, wildcards) a dry-run of each named argument list plans, ``all`` left out."""
    results = snakemake_concurrently([("-n", *args) for args in runs.values()], timeout=300)
    planned = {}
    for name, result in zip(runs, results):
        assert result.returncode == 0, result.stderr[-2000:]
        planned[name] = [(rule, w) for rule, w in planned_jobs(result.stdout) if rule != "all"]
    return planned


def test_resources_and_an_unchanged_config_rerun_nothing(finished, tmp_path):
    """README "Changing one knob": ``resources`` (GPUs, partition, account) re-run nothing; neither
    does the unchanged config (so the finished state is sound and the other knob tests mean something)."""
    cluster = overlay(tmp_path, "cluster", {"resources": {"gpus": 2, "gpu_model": "a100", "slurm_partition": "gpu",
                                                          "slurm_account": "lab"}})
    planned = planned_after({**finished, **{f"{name} + resources": (*args, cluster) for name, args in finished.items()}})
    assert planned == {name: [] for name in planned}


def test_customization_steps_rerun_only_the_customization(finished, tmp_path):
    """``customization.steps`` (text-to-image config): the 4 customize jobs and customization_eval
    (and the runtime figure, which reads every benchmark); no LoRA, pretraining or LDS job."""
    steps = overlay(tmp_path, "steps", {"customization": {"steps": 200}})
    jobs = planned_after({"steps": (*finished["text_to_image"], steps)})["steps"]
    assert sorted(rule for rule, _ in jobs) == ["customization_eval", *["customize"] * 4, "plot_runtime"]
    assert sorted(w["group"] for rule, w in jobs if rule == "customize") == ["0", "1", "2", "3"]


def test_more_lds_subsets_train_and_measure_only_the_new_ones(finished, tmp_path):
    """``subsets.pools.lds.count`` 16 → 32: 16 new trainings and 4 new measurement jobs, the parts of
    4 new models each (masks are pure functions of (seed, pool, k), so subsets 0–15 keep their models
    and parts 0–3 their stores), and nothing is retrained or re-featurized."""
    more = overlay(tmp_path, "lds64", {"subsets": {"pools": {"lds": {"count": 32}}}})
    jobs = planned_after({"lds64": (*finished["default"], more)})["lds64"]
    trained = [(w["pool"], w["subset"], w["seed"]) for r, w in jobs if r == "train_model"]
    assert sorted(trained) == sorted(("lds", str(k), "0") for k in range(16, 32))
    assert sorted((w["pool"], w["part"]) for r, w in jobs if r == "measure_outputs") == [("lds", str(p)) for p in range(4, 8)]
    retrained = {"prepare_data", "pretrain_base", "generate", "trajectory", "featurize", "gather_features",
                 "gram_partial", "kernel", "residuals", "counterfactual_train", "customize"}
    again = collections.Counter(r for r, _ in jobs if r in retrained)
    assert not again, f"a larger lds pool re-runs {dict(again)}"


def test_a_grown_pool_measures_only_its_new_models_for_real(tmp_path):
    """Issue 17 item 2 through Snakemake: a measure_outputs job measures a part of 4 models. An lds
    pool of 5 (parts [0–3], [4]) grown to 6 re-runs part 1 only, which measures model 5 alone: the
    other five stores keep their inode and mtime, and the gathered ground truth keeps their rows."""
    from diffattr.ground_truth import read_ground_truth

    out = tmp_path / "results"
    target = str(out / "ground_truth" / "lds.zarr")
    pool = lambda n: overlay(tmp_path, f"lds{n}", {"output_dir": str(out), "subsets": {"pools": {"lds": {"count": n}}}})  # noqa: E731
    first = snakemake(target, "--cores", "2", "--configfile", "config/smoke.yaml", pool(5))
    assert first.returncode == 0, first.stderr[-3000:]
    assert job_counts(first.stdout + first.stderr)["measure_outputs"] == 2
    stores = sorted((out / "ground_truth" / "lds").glob("part*/*/seed0.zarr"))
    assert [p.relative_to(out / "ground_truth" / "lds").as_posix() for p in stores] == \
        [*(f"part0/{k}/seed0.zarr" for k in range(4)), "part1/4/seed0.zarr"]
    stamp = lambda p: ((p / "zarr.json").stat().st_ino, (p / "zarr.json").stat().st_mtime_ns)  # noqa: E731
    before, truth = {p: stamp(p) for p in stores}, read_ground_truth(target, "val")

    second = snakemake(target, "--cores", "2", "--configfile", "config/smoke.yaml", pool(6))
    assert second.returncode == 0, second.stderr[-3000:]
    # (no make_subsets: the jobs read only the run's target, and a training draws its mask from its params)
    assert job_counts(second.stdout + second.stderr) == {"train_model": 1, "measure_outputs": 1, "gather_ground_truth": 1}
    assert {p: stamp(p) for p in stores} == before
    assert "measured 1 of 2 models [(5, 0)]" in (out / "logs" / "measure_outputs" / "lds" / "part1.log").read_text()
    grown = read_ground_truth(target, "val")
    assert grown.shape == (6, truth.shape[1]) and np.array_equal(grown[:5], truth)


def test_ci_runs_exactly_the_readme_test_command():
    """.ci/run's command is README's "Run the tests" line, run under CI=true; both README commands
    install the same torch and kronfluence (without its torchvision) before the package."""
    readme = (REPO / "README.md").read_text()
    test_command = readme.split("**Run the tests**")[1].split("```bash\n")[1].split("\n```")[0]
    run_command = readme.split("**Run the main job**")[1].split("```bash\n")[1].split("\n```")[0]
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == test_command
    assert re.search(r"^export CI=true\b", ci, re.M)
    assert test_command.split(" -e ")[0] == run_command.split(" -e ")[0]
