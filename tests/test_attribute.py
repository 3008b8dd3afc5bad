"""Attribute your own model (issue 16): a diffusers model directory, its training data and a folder
of images to explain. Fast tier: the plan of an attribute run and every refusal, one sentence each,
before any job. Workflow tier: over the finished smoke run, its full model exported and its val
images written as PNGs give the benchmark's TRAK and D-TRAK scores again, and planted training
images come back at rank 1."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from diffattr.config import ConfigError
from plans import config_of, plan_of


def write_pngs(folder, images: np.ndarray) -> list[str]:
    """uint8 (n, H, W, C) images as PNG files 000.png, 001.png, … (lossless)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(images):
        path = folder / f"{i:03d}.png"
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
        names.append(str(path))
    return names


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's model (config.yaml's digits UNet, random weights, exported as a save_pretrained
    directory) and a folder of five 8×8 gray PNGs."""
    import torch

    from diffattr.models.ddpm import build_unet, save_weights
    from diffattr.models.diffusers_dir import export_unet

    cfg = config_of()
    root = tmp_path_factory.mktemp("user")
    torch.manual_seed(0)
    save_weights(build_unet(cfg["model"]["unet"]), root / "ck.safetensors", {})
    export_unet(root / "ck.safetensors", cfg["model"]["unet"], cfg["model"]["scheduler"], root / "model")
    rng = np.random.default_rng(0)
    write_pngs(root / "queries", rng.integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8))
    return root


def layer(root, **attribute) -> dict:
    block = {"model": str(root / "model"), "queries": str(root / "queries"), "methods": ["pixel_l2", "trak", "dtrak"]}
    return {"output_dir": str(root / "out"), "attribute": block | attribute,
            "methods": {"trak": {"chosen_lambda": 1.0}, "dtrak": {"chosen_lambda": 0.1}}}


def test_an_attribute_run_imports_the_model_and_scores_the_queries_only(user):
    plan = plan_of(layer(user))
    cfg = plan.config
    n, q = plan.sizes["train"], plan.sizes["query"]
    assert q == 5 and plan.sets == ["query"]
    shards = lambda spec, rows: math.ceil(rows / cfg["features"][spec]["shard_size"])  # noqa: E731
    featurize = sum(shards(spec, n) + shards(spec, q) for spec in ("loss", "square"))
    grids = sum(1 for s in cfg["report"]["samples"] if s < q) and 3
    assert plan.job_counts() == {
        "all": 1, "prepare_data": 1, "import_model": 1, "prepare_queries": 1,
        "featurize": featurize, "gather_features": 4, "kernel": 2,  # loss, square × {train, query}; k > N: dual
        "score": 3, "top_attributions": 3, **({"attribution_grids": grids} if grids else {}),
    }
    L = plan.layout
    assert plan.method_inputs("trak", "query") == {
        "kernels": [L.kernel.format(spec="loss", pool="full", subset=0, seed=0)],
        "train": [L.features.format(spec="loss", pool="full", subset=0, seed=0, split="train")],
        "queries": [L.features.format(spec="loss", pool="full", subset=0, seed=0, split="query")],
        "lambdas": [], "residuals": []}  # λ: the block's chosen_lambda, no select-pool curve
    assert plan.method_inputs("pixel_l2", "query") == {"data": L.data, "query_images": L.query_images}
    assert plan.checkpoint("full", 0, 0) == L.imported_model
    assert set(plan.final_outputs) == {p.format(method=m, set="query") for m in ("pixel_l2", "trak", "dtrak")
                                       for p in (L.topk_table, L.topk_parquet)}


def test_the_model_block_becomes_the_user_model_s_config(user):
    import json

    plan = plan_of(layer(user))
    saved = json.loads((user / "model" / "config.json").read_text())
    for key, value in plan.config["model"]["unet"].items():
        assert saved[key] == (list(value) if isinstance(value, tuple) else value), key


@pytest.mark.parametrize("method, message", [
    ("datamodel", "needs the retrain pool's models, which an attribute run does not train"),
    ("encoded_ensemble", "needs the encoded pool's models"),
    ("trak_ens", "'methods.trak_ens.models' must be {pool: full, count: 1}"),
    ("relatif", r"'methods.relatif.chosen_lambda' \(or lambda_from\) is required in an attribute run"),
    ("tracin", "'features.loss_c25' reads the checkpoint at 0.25 of training"),
    ("journey_trak", "explains generated samples only"),
])
def test_a_method_an_attribute_run_cannot_serve_is_refused(user, method, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        plan_of(layer(user, methods=[method]))


def test_bad_queries_are_refused_naming_the_file(user, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match="holds no PNG or JPEG image"):
        plan_of(layer(user, queries=str(empty)))
    broken = tmp_path / "broken"
    write_pngs(broken, np.zeros((2, 8, 8, 1), dtype=np.uint8))
    (broken / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ConfigError, match=r"Query image '.*001\.png' cannot be decoded"):
        plan_of(layer(user, queries=str(broken)))
    large = tmp_path / "large"
    write_pngs(large, np.zeros((1, 16, 16, 1), dtype=np.uint8))
    with pytest.raises(ConfigError, match=r"Query image '.*000\.png' is 16×16 but the model and the data are 8×8"):
        plan_of(layer(user, queries=str(large)))
    assert not (user / "out").exists()  # nothing written by any refusal


def test_bad_model_directories_are_refused(user, tmp_path):
    import shutil

    nothing = tmp_path / "nothing"
    with pytest.raises(ConfigError, match="Config key 'attribute.model'"):
        plan_of(layer(user, model=str(nothing)))
    pickled = tmp_path / "pickled"
    shutil.copytree(user / "model", pickled)
    for weights in pickled.rglob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ConfigError, match="Config key 'attribute.model'.*(pickle|\\.bin)"):
        plan_of(layer(user, model=str(pickled)))
    no_config = tmp_path / "no_config"
    shutil.copytree(user / "model", no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(ConfigError, match="Config key 'attribute.model'.*config.json"):
        plan_of(layer(user, model=str(no_config)))


def test_a_resolution_or_channel_mismatch_with_the_data_is_refused(user, tmp_path):
    import torch

    from diffattr.models.ddpm import build_unet, save_weights
    from diffattr.models.diffusers_dir import export_unet

    cfg = config_of()
    rgb = dict(cfg["model"]["unet"], in_channels=3, out_channels=3)
    torch.manual_seed(0)
    save_weights(build_unet(rgb), tmp_path / "rgb.safetensors", {})
    export_unet(tmp_path / "rgb.safetensors", rgb, cfg["model"]["scheduler"], tmp_path / "rgb")
    with pytest.raises(ConfigError, match="Config key 'attribute.model'.*channel"):
        plan_of(layer(user, model=str(tmp_path / "rgb")))


def test_an_attribute_block_without_images_is_refused(user):
    block = layer(user)
    del block["attribute"]["queries"]
    with pytest.raises(ConfigError, match="names no images to explain"):
        plan_of(block)


@pytest.mark.workflow
def test_the_benchmark_s_model_exported_gives_its_scores_and_finds_planted_images(smoke, tmp_path):
    """Equivalence: the smoke run's full model exported (diffattr export-model) and its val images as
    PNGs, explained by an attribute run with the λ the benchmark chose on its select pool, give the
    benchmark's TRAK and D-TRAK val scores and the same top-10. Planted duplicates: training images
    used as queries come back at rank 1 for pixel L2 and for TRAK."""
    import pandas as pd
    import yaml
    import zarr

    from diffattr.cli import main
    from diffattr.data.store import read_images
    from diffattr.scores import open_scores, responsibility
    from diffattr.workflow.layout import Layout
    from workflow import overlay, snakemake

    with open(smoke.config) as f:
        bench = Layout(yaml.safe_load(f)["output_dir"])
    assert main(["export-model", "--config", "config/smoke.yaml", smoke.config, "--out", str(tmp_path / "model")]) == 0
    val = read_images(bench.data, "val")
    train = read_images(bench.data, "train")
    planted = [3, 57, 111]
    write_pngs(tmp_path / "queries", np.concatenate([val, train[planted]]))
    chosen = {m: zarr.open_group(bench.scores.format(method=m, set="val"), mode="r").attrs["lambdas"][0]
              for m in ("trak", "dtrak")}
    out = tmp_path / "attr"
    attr = overlay(tmp_path, "attr", {
        "output_dir": str(out),
        "attribute": {"model": str(tmp_path / "model"), "queries": str(tmp_path / "queries"),
                      "methods": ["pixel_l2", "trak", "dtrak"], "top": 10},
        "methods": {m: {"chosen_lambda": lam} for m, lam in chosen.items()}})
    result = snakemake("--cores", "2", "--configfile", "config/smoke.yaml", attr, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    L, n_val = Layout(str(out)), len(val)
    for method in ("trak", "dtrak"):
        ours = np.asarray(open_scores(L.scores.format(method=method, set="query"))[:])[:n_val]
        theirs = np.asarray(open_scores(bench.scores.format(method=method, set="val"))[:])
        scale = np.abs(theirs).max()
        print(f"{method}: max |Δτ| = {np.abs(ours - theirs).max():.3g} (max |τ| {scale:.3g})")
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * scale)
        top = lambda s: np.argsort(-responsibility(s, -1), axis=1, kind="stable")[:, :10]  # noqa: E731
        assert (top(ours) == top(theirs)).mean() >= 0.99
    table = pd.read_csv(L.topk_table.format(method="pixel_l2", set="query"))
    first = table[(table["end"] == "top") & (table["rank"] == 1)].set_index("query")["train_index"]
    assert [first[n_val + i] for i in range(len(planted))] == planted  # pixel L2: exact copies at rank 1
    trak = pd.read_csv(L.topk_table.format(method="trak", set="query"))
    trak_first = trak[(trak["end"] == "top") & (trak["rank"] == 1)].set_index("query")["train_index"]
    found = sum(trak_first[n_val + i] == p for i, p in enumerate(planted))
    print(f"planted duplicates at rank 1: pixel_l2 {len(planted)}/{len(planted)}, trak {found}/{len(planted)}")
    assert found >= 2  # measured 2/3 on the smoke model (pixel L2: 3/3); TRAK ranks by gradient, not pixels
    assert os.path.getsize(L.topk_parquet.format(method="trak", set="query")) > 0
    # diffattr query: the first image alone gets the batch run's top-10 and scores (same row-0 draws)
    from diffattr.query import query

    with open(attr) as f:
        layer_dict = yaml.safe_load(f)
    answer = query(plan_of("config/smoke.yaml", layer_dict), "trak", [str(tmp_path / "queries" / "000.png")], 10)
    batch = trak[trak["query"] == 0].reset_index(drop=True)
    assert answer.table["train_index"].tolist() == batch["train_index"].tolist()
    # one query row instead of a block of 43: BLAS sums in another order (measured max |Δτ| 1.9e-7 at |τ| ≈ 0.05)
    np.testing.assert_allclose(answer.table["score"], batch["score"], rtol=0, atol=1e-5 * batch["score"].abs().max())


@pytest.mark.workflow
def test_the_attribute_dag_dry_runs_on_the_slurm_profile_as_planned(user, tmp_path):
    """Item 8: the attribute DAG on the slurm profile lists exactly the plan's jobs, and its model
    jobs declare the GPU request of the config's resources."""
    from workflow import job_counts, overlay, snakemake

    config = overlay(tmp_path, "attr", layer(user) | {"resources": {"gpus": 1}})
    result = snakemake("-n", "--profile", "profiles/slurm", "--configfile", config, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert job_counts(result.stdout) == plan_of(layer(user) | {"resources": {"gpus": 1}}).job_counts()
    assert "gpu=1" in result.stdout.replace(" ", "")  # featurize / score / import jobs ask for a GPU


def test_generate_adds_the_model_s_own_samples_as_a_second_set(user):
    plan = plan_of(layer(user, generate=True))
    counts = plan.job_counts()
    assert plan.sets == ["query", "gen"] and counts["generate"] == 1
    assert counts["score"] == counts["top_attributions"] == 3 * 2
    assert plan.generator == plan.layout.imported_model  # the user's model generates
    assert plan.method_inputs("pixel_l2", "gen") == {"data": plan.layout.data, "generated": plan.layout.generated}


def test_lambda_from_a_benchmark_run_reads_its_select_pool_choice(user, tmp_path):
    """methods.trak.lambda_from: the chosen row of the benchmark run's λ table (select pool, val set)
    becomes chosen_lambda; the gen choice, the lds pool's rows and the other λ are not taken."""
    import pandas as pd

    from diffattr.workflow.layout import Layout

    path = Layout(str(tmp_path / "bench")).lambda_curve.format(method="trak", pool="full", subset=0, seed=0)
    os.makedirs(os.path.dirname(path))
    pd.DataFrame({"pool": ["select"] * 4 + ["lds"] * 2, "set": ["val", "val", "gen", "gen", "val", "val"],
                  "lambda": [0.1, 3.0, 0.1, 3.0, 0.1, 3.0], "lds": [0.1, 0.2, 0.3, 0.1, 0.5, 0.1],
                  "chosen": [False, True, True, False, True, False]}).to_csv(path, index=False)
    config = layer(user)
    config["methods"]["trak"] = {"lambda_from": {"run": str(tmp_path / "bench")}}
    assert plan_of(config).method("trak")["chosen_lambda"] == 3.0
    config["methods"]["trak"] = {"lambda_from": {"run": str(tmp_path / "bench"), "set": "gen"}}
    assert plan_of(config).method("trak")["chosen_lambda"] == 0.1
    config["methods"]["dtrak"] = {"lambda_from": {"run": str(tmp_path / "bench")}}
    with pytest.raises(ConfigError, match=r"'methods.dtrak.lambda_from' names the run .* which has no λ table"):
        plan_of(config)
    config["methods"]["dtrak"] = {"lambda_from": {"run": str(tmp_path / "bench"), "method": "trak"}, "chosen_lambda": 1.0}
    with pytest.raises(ConfigError, match="sets both chosen_lambda and lambda_from"):
        plan_of(config)


@pytest.fixture(scope="module")
def earlier(user):
    """A second save_pretrained directory of the user's UNet architecture (other random weights): the
    model at half of its training."""
    import torch

    from diffattr.models.ddpm import build_unet, save_weights
    from diffattr.models.diffusers_dir import export_unet

    cfg = config_of()
    torch.manual_seed(1)
    save_weights(build_unet(cfg["model"]["unet"]), user / "ck_half.safetensors", {})
    export_unet(user / "ck_half.safetensors", cfg["model"]["unet"], cfg["model"]["scheduler"], user / "model_half")
    return user / "model_half"


def tracin_layer(user, earlier, **method) -> dict:
    config = layer(user, methods=["tracin2"], checkpoints=[{"fraction": 0.5, "model": str(earlier)}])
    config["methods"]["tracin2"] = {"kind": "gradient", "features": ["loss_c50", "loss"], "similarity": "dot",
                                    "weighting": "equal"} | method
    return config


def test_tracin_over_the_checkpoints_a_user_names(user, earlier):
    """attribute.checkpoints: a spec at checkpoint 0.5 reads the imported earlier checkpoint, the final
    spec the imported model; one import_checkpoint job; equal weights."""
    plan = plan_of(tracin_layer(user, earlier))
    step = plan.feature_step("loss_c50")
    assert plan.checkpoint("full", 0, 0, step) == plan.layout.imported_checkpoint.format(step=step)
    assert plan.checkpoint("full", 0, 0) == plan.layout.imported_model
    assert plan.checkpoint_source(type("W", (), {"step": step})) == {"model": str(earlier), "lora": []}
    counts = plan.job_counts()
    assert counts["import_checkpoint"] == 1 and counts["import_model"] == 1 and counts["score"] == 1
    assert plan.method_params("tracin2")["weights"] == [0.5, 0.5]


def test_bad_checkpoints_are_refused(user, earlier, tmp_path):
    import shutil

    with pytest.raises(ConfigError, match="'methods.tracin2.weighting' is learning_rate"):
        plan_of(tracin_layer(user, earlier, weighting="learning_rate"))
    with pytest.raises(ConfigError, match=r"'features.loss_c25' reads the checkpoint at 0.25 of training, which "
                                          r"attribute.checkpoints does not give"):
        plan_of(tracin_layer(user, earlier, features=["loss_c25", "loss"]))
    other = tmp_path / "other"
    shutil.copytree(earlier, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(cfg | {"layers_per_block": 2}))
    with pytest.raises(ConfigError, match=r"'attribute.checkpoints\[0\]' names .* whose architecture"):
        plan_of(tracin_layer(user, other))
    with pytest.raises(ConfigError, match=r"'attribute.checkpoints\[0\]': Model directory .* does not exist"):
        plan_of(tracin_layer(user, tmp_path / "nowhere"))


@pytest.mark.workflow
def test_tracin_over_user_checkpoints_sums_each_checkpoint_s_gradient_products(user, earlier, tmp_path):
    """A real attribute run with TracIn over the final model and an earlier checkpoint directory:
    its scores equal ½ Φ_half(x)·Φ_half(z) + ½ Φ(x)·Φ(z), with every Φ recomputed here straight from
    each directory's UNet (diffusers' from_pretrained, not the import job) by the featurize function."""
    from diffattr.featurize import FeatureSpec, featurize
    from diffattr.models.ddpm import build_scheduler
    from diffattr.models.diffusers_classes import UNet2DModel
    from diffattr.models.family import Model
    from diffattr.scores import open_scores
    from diffattr.workflow.layout import Layout
    from workflow import overlay, snakemake

    out = tmp_path / "out"
    config = tracin_layer(user, earlier) | {"output_dir": str(out), "data": {"n_train": 300}}
    result = snakemake("--cores", "2", "--configfile", overlay(tmp_path, "tracin", config), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    plan, L = plan_of(config), Layout(str(out))
    scores = np.asarray(open_scores(L.scores.format(method="tracin2", set="query"))[:])
    products = []
    for spec, directory in (("loss_c50", earlier), ("loss", user / "model")):
        unet = UNet2DModel.from_pretrained(directory, use_safetensors=True, local_files_only=True).eval()
        model, fs = Model(unet, plan.model), FeatureSpec.from_dict(plan.config["features"][spec])
        phi = {}
        for split, store in (("train", L.data), ("query", L.query_images)):
            inputs, _ = model.inputs(store, split)
            phi[split] = featurize(unet, inputs, np.arange(len(inputs)), split, fs, build_scheduler(plan.model["scheduler"]))
        products.append(phi["query"] @ phi["train"].T)
    expected = 0.5 * products[0] + 0.5 * products[1]
    scale = np.abs(expected).max()
    print(f"tracin over checkpoints: max |Δτ| = {np.abs(scores - expected).max():.3g} (max |τ| {scale:.3g})")
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-4 * scale)
    assert np.abs(products[0] - products[1]).max() > 0.1 * scale  # the two checkpoints' terms differ
