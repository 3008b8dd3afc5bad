"""Bad input is refused before any job runs, in one sentence that names the key."""

import pytest

from conftest import REPO
from diffattr.config import ConfigError, check_inputs, load_yaml, validate
from workflow import overlay, snakemake_concurrently

SCHEMA = load_yaml(REPO / "schemas" / "config.schema.yaml")
BASE = load_yaml(REPO / "config.yaml")

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
    for name in ["config.yaml", "config/smoke.yaml", "config/cifar2.yaml"]:
        validate(merged(load_yaml(REPO / name)), SCHEMA)


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
