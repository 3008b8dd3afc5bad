"""AbC-style customization (docs/methods.md §2.16): exemplar groups, Recall@k and AP against scikit-learn and
by hand, customization of a tiny LoRA model, and the evaluation on a case with a known answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from test_family import setup  # noqa: F401 - the tiny base pipeline and styled-digits store
from diffattr.customization import (
    CustomizationConfig,
    average_precision,
    customize_group,
    evaluate_customization,
    exemplar_rows,
    recall_at_k,
)
from diffattr.data import ImageSet
from diffattr.data.store import read_images, read_labels, write_image_store
from diffattr.models.family import fresh_model, save_model, split_captions

GENERATE = {"count": 4, "steps": 3, "seed": 0, "batch_size": 4}


@pytest.fixture(scope="module")
def custom_store(setup, tmp_path_factory):  # noqa: F811
    """The family tests' store with a val split of 24 un-inverted digits (two or three per class)."""
    _, store, _ = setup
    train = ImageSet(read_images(store, "train"), read_labels(store, "train"), ["t"] * 24, [str(c) for c in range(10)])
    path = str(tmp_path_factory.mktemp("custom") / "data.zarr")
    val = ImageSet(255 - train.images, train.labels, ["v"] * 24, train.class_names)
    write_image_store(path, {"train": train, "val": val})
    return path


def test_average_precision_equals_scikit_learn_and_recall_counts_the_top_k():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((6, 40))
    relevant = np.zeros((6, 40), dtype=bool)
    for q in range(6):
        relevant[q, rng.choice(40, size=q + 1, replace=False)] = True
    expected = [average_precision_score(relevant[q], scores[q]) for q in range(6)]
    np.testing.assert_allclose(average_precision(scores, relevant), expected, rtol=1e-12)
    recall = recall_at_k(scores, relevant, (1, 5, 40))
    for q in range(6):
        top5 = np.argsort(-scores[q])[:5]
        assert recall[q, 1] == relevant[q, top5].sum() / relevant[q].sum()
    assert (recall[:, 2] == 1).all()


def test_exemplar_groups_are_one_class_each_and_disjoint():
    labels = np.repeat(np.arange(5), 6)
    rows, classes = exemplar_rows(labels, 4, 3, seed=1)
    assert rows.shape == (4, 3) and len(set(classes.tolist())) == 4
    assert all((labels[rows[g]] == classes[g]).all() for g in range(4))
    assert len(set(rows.reshape(-1).tolist())) == 12
    again, _ = exemplar_rows(labels, 4, 3, seed=1)
    assert np.array_equal(rows, again)
    with pytest.raises(ValueError, match="6 exemplar groups need as many classes"):
        exemplar_rows(labels, 6, 3, seed=1)
    with pytest.raises(ValueError, match="unknown customization settings"):
        CustomizationConfig.from_dict({"group": 2})


def test_customization_fine_tunes_and_synthesizes_from_the_group_prompt(setup, custom_store, tmp_path):  # noqa: F811
    params, _, _ = setup
    store = custom_store
    full = str(tmp_path / "full.safetensors")
    save_model(fresh_model(params, 0), full, {})
    custom = {"groups": 2, "exemplars": 2, "images": 3, "steps": 4}
    run = {**params, "customization": custom, "generate": GENERATE}
    images = customize_group(store, full, run, 1, str(tmp_path / "g1.safetensors"), str(tmp_path / "g1.zarr"),
                             str(tmp_path / "log.csv"), str(tmp_path / "resume"))
    assert images.shape == (3, 8, 8, 1) and len(pd.read_csv(tmp_path / "log.csv")) == 4
    _, classes = exemplar_rows(read_labels(store, "val"), 2, 2, 0)
    assert split_captions(str(tmp_path / "g1.zarr"), "gen", params) == [f"a sks digit {classes[1]}"] * 3


def test_evaluation_finds_exemplars_that_are_the_synthesized_images(setup, custom_store, tmp_path):  # noqa: F811
    """Synthesized images equal to their group's exemplars: pixel and latent cosine rank them first
    (Recall@k = 1 for k ≥ exemplars, AP = 1)."""
    params, _, _ = setup
    store = custom_store
    custom = {"groups": 2, "exemplars": 2, "ks": [1, 2, 10]}
    rows, classes = exemplar_rows(read_labels(store, "val"), 2, 2, 0)
    val = read_images(store, "val")
    stores = []
    for g in range(2):
        path = str(tmp_path / f"g{g}.zarr")
        write_image_store(path, {"gen": ImageSet(val[rows[g]], np.full(2, classes[g]), ["x"] * 2, [])})
        stores.append(path)
    table = evaluate_customization(store, stores, {**params, "customization": custom}, str(tmp_path / "c.csv"),
                                   str(tmp_path / "c.md"))
    assert set(table["encoder"]) == {"pixel", "latent"} and len(table) == 8
    assert (table["recall@2"] == 1).all() and (table["recall@10"] == 1).all()
    np.testing.assert_allclose(table["ap"], 1.0)
    assert (table["recall@1"] == 0.5).all()
    assert "| pixel | 0.500 | 1.000 | 1.000 | 1.000 |" in (tmp_path / "c.md").read_text()
