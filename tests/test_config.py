"""Bad input is refused before any job runs, in one sentence that names the key."""

import pytest

from conftest import REPO
from diffattr.cli import merge_configs
from diffattr.config import ConfigError, check_inputs, load_yaml, validate
from workflow import overlay, snakemake_concurrently

SCHEMA = load_yaml(REPO / "schemas" / "config.schema.yaml")
BASE = merge_configs(load_yaml(REPO / "config.yaml"), load_yaml(REPO / "config" / "benchmark.yaml"))
"""The benchmark (config/benchmark.yaml over config.yaml): every method kind has jobs, so every check runs."""

BAD = [
    ("unknown_key", {"train": {"stepz": 5}}, "Unknown config key 'train.stepz'"),
    ("wrong_type", {"train": {"steps": "many"}}, "Config key 'train.steps' must be of type integer, got 'many'."),
    ("alpha_high", {"subsets": {"alpha": 1.5}}, "Config key 'subsets.alpha' must be less than 1, got 1.5."),
    ("alpha_zero", {"subsets": {"alpha": 0}}, "Config key 'subsets.alpha' must be greater than 0, got 0."),
    ("missing_path", {"data": {"source": "cifar10", "path": "/no/such/cifar"}},
     "Config key 'data.path' points at '/no/such/cifar', which does not exist."),
    ("bad_method", {"methods": {"pix": {"kind": "pixel", "similarity": "manhattan"}}},
     "Config key 'methods.pix.similarity' must be one of ['dot', 'cosine', 'l2'], got 'manhattan'."),
]


def merged(update: dict) -> dict:
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for key, value in update.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key != "methods" else value
    return config


def test_shipped_configs_are_valid():
    for name in ["config.yaml", "config/smoke.yaml", "config/cifar2.yaml", "config/mnist.yaml"]:
        validate(merge_configs(BASE, load_yaml(REPO / name)), SCHEMA)


@pytest.mark.parametrize("name,update,sentence", BAD, ids=[b[0] for b in BAD])
def test_bad_config_sentence(name, update, sentence):
    config = merged(update)
    with pytest.raises(ConfigError) as err:
        validate(config, SCHEMA)
        check_inputs(config)
    assert sentence in str(err.value)
    assert str(err.value).count(". ") == 0  # one sentence


@pytest.mark.workflow
def test_snakemake_refuses_bad_config_before_any_job(tmp_path):
    """Through the real CLI: a schema error and a missing data path (every sentence is unit-tested above)."""
    cases = [b for b in BAD if b[0] in ("unknown_key", "missing_path")]
    results = snakemake_concurrently([("-n", "--configfile", overlay(tmp_path, name, update)) for name, update, _ in cases])
    for (_, _, sentence), result in zip(cases, results):
        assert result.returncode != 0
        assert sentence in result.stdout + result.stderr
        assert "rule prepare_data" not in result.stdout


@pytest.mark.parametrize("count,sentence", [
    (15, "Config key 'subsets.pools.encoded.count' is 15; an encoded ensemble needs an even number of models."),
    (12, "Config key 'subsets.pools.encoded.count' is 12, whose 924 balanced codes are fewer than the 1597 training samples; use more models."),
])
def test_encoded_pool_must_give_every_sample_its_own_code(count, sentence):
    """§2.18: E even, C(E, E/2) ≥ N (digits: 1597 training samples, so 12 models are too few, 14 enough)."""
    from diffattr.config import check_encoded_pool

    pools = {**BASE["subsets"]["pools"], "encoded": {"count": count, "seeds": [0]}}
    with pytest.raises(ConfigError) as err:
        check_encoded_pool(merged({"subsets": {"pools": pools}}), 1597)
    assert str(err.value) == sentence
    check_encoded_pool(merged({"subsets": {"pools": {**pools, "encoded": {"count": 14, "seeds": [0]}}}}), 1597)


@pytest.mark.parametrize("update,sentence", [
    ({"methods": ["das", "nope"]}, "Config key 'counterfactual.methods' names 'nope', which is not a block under methods."),
    ({"methods": ["random_removal"]}, "Config key 'counterfactual.methods' names 'random_removal', the random-removal "
                                      "control, which always runs; remove it."),
    ({"count": 200}, "Config key 'counterfactual.count' is 200, but only 200 images are generated; use fewer."),
    ({"ks": [10, 1597]}, "Config key 'counterfactual.ks' asks to remove 1597 of the 1597 training images; use fewer."),
])
def test_counterfactual_block_is_checked(update, sentence):
    """§4.5: existing methods, fewer samples than generated images, fewer removals than training images."""
    from diffattr.config import check_counterfactual

    with pytest.raises(ConfigError) as err:
        check_counterfactual(merged({"counterfactual": update}), 1597, 200)
    assert str(err.value) == sentence
    with pytest.raises(ConfigError, match="add 'gen' to evaluation.sets"):
        check_counterfactual(merged({"evaluation": {"sets": ["val"]}}), 1597, 200)
    check_counterfactual(merged({}), 1597, 200)
    check_counterfactual(merged({"counterfactual": {"methods": [], "count": 500}}), 1597, 200)  # off: nothing checked


def test_report_block_is_checked():
    from diffattr.config import check_report

    sizes = {"train": 1597, "val": 200, "gen": 200}
    with pytest.raises(ConfigError) as err:
        check_report(merged({"report": {"methods": ["das", "nope"]}}), sizes)
    assert str(err.value) == "Config key 'report.methods' names 'nope', which is not a block under methods."
    with pytest.raises(ConfigError) as err:
        check_report(merged({"report": {"set": "val", "samples": [3, 200]}}), sizes)
    assert str(err.value) == "Config key 'report.samples' names sample 200, but the 'val' set has 200 images."
    check_report(merged({}), sizes)


T2I = load_yaml(REPO / "config" / "text_to_image.yaml")

REFUSALS = [
    # (name, text_to_image?, layer, sentence): every other refusal of check_inputs / check_text_to_image
    ("path_missing", False, {"data": {"source": "cifar10", "path": None}},
     "Config key 'data.path' is required for data.source 'cifar10'."),
    ("path_is_file", False, {"data": {"source": "image_folder", "path": "config.yaml", "resolution": 8}},
     "Config key 'data.path' points at 'config.yaml', which is a file, but data.source 'image_folder' reads a folder."),
    ("resolution_missing", False, {"data": {"source": "image_folder", "path": "config", "resolution": None}},
     "Config key 'data.resolution' is required for data.source 'image_folder'."),
    ("customization_ddpm", False, {"customization": {"groups": 2}},
     "Config key 'customization' needs model.family text_to_image (it customizes a LoRA)."),
    ("evaluated_unknown", False, {"evaluation": {"methods": ["trak", "trek"]}},
     "Config key 'evaluation.methods' names 'trek', which is not a block under 'methods'."),
    ("features_unknown", False, {"methods": {"trak": {"features": "lost"}}},
     "Config key 'methods.trak.features' names 'lost', which is not a block under 'features'."),
    ("journey_without_gen", False, {"evaluation": {"sets": ["val"]}, "counterfactual": {"methods": []},
                                    "report": {"set": "val"}},
     "Config key 'methods.journey_trak.query' is journey, which attributes generated samples only, but "
     "'evaluation.sets' has no gen."),
    ("encoded_without_pool", False, {"subsets": {"pools": {"encoded": {"count": 0}}}},
     "Config key 'methods.encoded_ensemble' is an encoded ensemble, which needs 'subsets.pools.encoded.count' "
     "models (an even number of at least 2); it is 0."),
    ("retrain_too_few", False, {"subsets": {"pools": {"retrain": {"count": 3}}}},
     "Config key 'methods.trak_ens' needs 4 retrain-pool models but 'subsets.pools.retrain.count' is 3."),
    ("classes_unknown", False, {"data": {"classes": ["3", "seven"]}},
     "Config key 'data.classes' names 'seven', which is not a class of the data (['0', '1', '2', '3', '4', '5', "
     "'6', '7', '8', '9'])."),
    ("t2i_pipeline_not_dir", True, {"model": {"text_to_image": {"pipeline_path": "config.yaml"}}},
     "Config key 'model.text_to_image.pipeline_path' points at 'config.yaml', which is not a directory."),
    ("t2i_n_base_missing", True, {"data": {"n_base": None}},
     "Config key 'data.n_base' is required when 'model.text_to_image' builds its base pipeline (no pipeline_path): "
     "the base is pretrained on that split."),
    ("t2i_prompts_missing", True, {"generate": {"prompts": None}},
     "Config key 'generate.prompts' is required for the text_to_image family."),
    ("t2i_hflip", True, {"train": {"hflip": True}},
     "Config key 'train.hflip' must be false for the text_to_image family (its inputs are latents)."),
    ("t2i_influence", True, {"evaluation": {"methods": ["trak", "influence_lissa"]}},
     "Config key 'methods.influence_lissa' is not supported for the text_to_image family yet; evaluate it with a "
     "ddpm model or leave it out of evaluation.methods."),
    ("t2i_journey", True, {"evaluation": {"methods": ["journey_trak"]}},
     "Config key 'methods.journey_trak' is not supported for the text_to_image family yet; evaluate it with a "
     "ddpm model or leave it out of evaluation.methods."),
    ("t2i_residual", True, {"evaluation": {"methods": ["das"]}},
     "Config key 'methods.das' is not supported for the text_to_image family yet; evaluate it with a "
     "ddpm model or leave it out of evaluation.methods."),
    ("t2i_counterfactual_embedding", True, {"counterfactual": {"embedding": {"encoder": "ddpm"}}},
     "Config key 'counterfactual.embedding' must be null for the text_to_image family (its encoders are the "
     "DDPM's UNet or CLIP on pixels; pixel L2 and ΔL_Simple remain)."),
    ("t2i_vae_channels", True, {"model": {"text_to_image": {"vae": {"in_channels": 3}}}},
     "Config key 'model.text_to_image.vae.in_channels' is 3 but the digits images have 1 channel(s)."),
    ("type_null", False, {"generate": {"count": None}}, "Config key 'generate.count' must be of type integer, got None."),
    ("min_items", False, {"evaluation": {"sets": []}}, "Config key 'evaluation.sets' is invalid: [] should be non-empty."),
]


@pytest.mark.parametrize("shipped", ["config/smoke.yaml", "config/text_to_image.yaml"])
def test_shipped_configs_pass_every_check(tmp_path, monkeypatch, shipped):
    """The controls of the refusals below: config.yaml under each shipped CPU config passes check_config."""
    from diffattr.cli import merge_configs
    from diffattr.config import check_config

    monkeypatch.chdir(REPO)
    check_config(merge_configs(BASE, {"output_dir": str(tmp_path / "out")}), SCHEMA)
    _, sizes = check_config(merge_configs(BASE, load_yaml(REPO / shipped), {"output_dir": str(tmp_path / "out")}), SCHEMA)
    assert sizes["train"] == {"config/smoke.yaml": 300, "config/text_to_image.yaml": 1797 - 60 - 897}[shipped]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,t2i,layer,sentence", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_every_refusal_names_its_key(tmp_path, monkeypatch, name, t2i, layer, sentence):
    """The exact sentence, through the DAG-time sequence (check_config), in the repository (relative
    paths), with nothing written under output_dir; a text_to_image case starts from its shipped config."""
    from diffattr.cli import merge_configs
    from diffattr.config import check_config

    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    config = merge_configs(BASE, *([T2I] if t2i else []), {"output_dir": str(out)}, layer)
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)
    assert str(err.value) == sentence
    assert not out.exists()


def test_a_missing_required_key_is_named():
    config = merged({})
    del config["generate"]
    with pytest.raises(ConfigError) as err:
        validate(config, SCHEMA)
    assert str(err.value) == "Config key 'generate' is required but missing."
