"""Issue 14: every bad input a careless user might give is refused before any job runs, in one
sentence naming the config key or the file, and nothing is written under output_dir.

Each case calls :func:`diffattr.config.check_config` — the very sequence rules/common.smk runs at
DAG-build time — on the default config with one thing wrong, next to a control that differs only in
that thing and passes. The last test runs real ``snakemake -n`` dry-runs for a few cases.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from diffattr.cli import main, merge_configs
from diffattr.config import ConfigError, check_config, load_yaml
from workflow import overlay, snakemake_concurrently

SCHEMA = load_yaml(REPO / "schemas" / "config.schema.yaml")
DEFAULT = merge_configs(load_yaml(REPO / "config.yaml"), load_yaml(REPO / "config" / "benchmark.yaml"))
"""The benchmark (config/benchmark.yaml over config.yaml): every method kind has jobs, so every check runs."""
N_DIGITS = 1797  # scikit-learn's digits; test_data checks DIGITS_CLASS_COUNTS against sklearn


def configured(tmp_path: Path, *layers: dict) -> dict:
    """config.yaml with ``layers`` over it (as Snakemake layers --configfile) and output_dir in tmp_path."""
    return merge_configs(DEFAULT, {"output_dir": str(tmp_path / "out")}, *layers)


def refusal(config: dict) -> str:
    """The sentence check_config refuses ``config`` with (fails the test when it is accepted)."""
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)
    message = str(err.value)
    assert message.endswith(".") and ". " not in message and "\n" not in message, message  # one sentence
    return message


def assert_refused(config: dict, *names: str) -> str:
    """Refused, naming each of ``names`` (a key or a file), with nothing written under output_dir."""
    message = refusal(config)
    for name in names:
        assert name in message, (name, message)
    out = Path(config["output_dir"])
    assert not out.is_dir() or not any(out.iterdir())
    return message


def write_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)  # numeric arrays only: nothing here needs pickle
    return str(path)


def digits_like(n: int, shape: tuple[int, ...] = (8, 8), classes: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"images": rng.integers(0, 256, (n, *shape), dtype=np.uint8), "labels": np.arange(n) % classes}


NPZ = {"counterfactual": {"methods": []}, "data": {"source": "npz", "n_attributed": 20}}
"""An npz source (few images: no counterfactual stage, whose k = 320 needs more)."""


def npz_config(tmp_path: Path, path: str, *layers: dict) -> dict:
    return configured(tmp_path, NPZ, {"data": {"path": path}}, *layers)


def rgb_unet(size: int) -> dict:
    return {"model": {"unet": {"sample_size": size, "in_channels": 3, "out_channels": 3}}}


def test_the_controls_pass(tmp_path):
    """The unaltered inputs of the cases below are accepted (so each refusal is for its one change)."""
    _, sizes = check_config(configured(tmp_path), SCHEMA)
    assert sizes == {"train": N_DIGITS - 200, "val": 200, "gen": 200}
    _, sizes = check_config(npz_config(tmp_path, write_npz(tmp_path / "ok.npz", **digits_like(100))), SCHEMA)
    assert sizes == {"train": 80, "val": 20, "gen": 200}
    split = {f"{s}_{k}": v for s, n in (("train", 60), ("test", 30)) for k, v in digits_like(n, (8, 8, 3)).items()}
    _, sizes = check_config(npz_config(tmp_path, write_npz(tmp_path / "split.npz", **split), rgb_unet(8)), SCHEMA)
    assert sizes == {"train": 60, "val": 20, "gen": 200}
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["npz_all", "npz_split", "image_folder", "cifar10"])
def test_image_size_must_match_the_unet(tmp_path, case):
    """H×W of the data ≠ model.unet.sample_size (8 in config.yaml)."""
    if case.startswith("npz"):
        arrays = digits_like(50, (16, 16))
        if case == "npz_split":
            arrays = {f"{s}_{k}": v for s in ("train", "test") for k, v in arrays.items()}
        path = write_npz(tmp_path / "big.npz", **arrays)
        message = assert_refused(npz_config(tmp_path, path), "model.unet.sample_size", path)
        assert message.endswith("are 16×16.")
        return
    folder = tmp_path / "folder"
    folder.mkdir()
    data = {"image_folder": {"source": "image_folder", "path": str(folder), "resolution": 16},
            "cifar10": {"source": "cifar10", "path": str(folder)}}[case]
    side = data.get("resolution", 32)
    message = assert_refused(configured(tmp_path, {"data": data}), "model.unet.sample_size")
    assert message.endswith(f"are {side}×{side}.")


def test_npz_images_are_read_from_their_headers_only(tmp_path):
    """A member whose header declares 10⁶ images but holds no data: its shape is known (and refused
    for the 8×8 UNet) without reading any image, which np.load would have to do."""
    from diffattr.data.sizes import npz_image_shape

    def header_only(shape):
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
        return buffer.getvalue()

    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", header_only((10**6, 64, 64, 3)))
    assert npz_image_shape(path) == (64, 64, 3)
    with pytest.raises(ValueError):
        np.load(path, allow_pickle=False)["images"]
    assert_refused(npz_config(tmp_path, str(path)), "model.unet.sample_size", str(path))


@pytest.mark.parametrize("test_shape", [(16, 16), (8, 8, 3), (8, 10)])
def test_npz_splits_must_share_one_image_shape(tmp_path, test_shape):
    arrays = {**{f"train_{k}": v for k, v in digits_like(60).items()},
              **{f"test_{k}": v for k, v in digits_like(30, test_shape).items()}}
    path = write_npz(tmp_path / "mixed.npz", **arrays)
    message = assert_refused(npz_config(tmp_path, path), "data.path", path, "train_images", "test_images")
    h, w, c = (*test_shape, 1)[:3]
    assert f"'test_images' are {h}×{w}×{c}" in message


CHANNELS = {
    "npz_rgb_gray_unet": ({"images": (8, 8, 3)}, {}, 3),
    "npz_gray_rgb_unet": ({"images": (8, 8)}, rgb_unet(8), 1),
    "npz_split_rgb_gray_unet": ({"train_images": (8, 8, 3), "test_images": (8, 8, 3)}, {}, 3),
    "folder_rgb_gray_unet": ("rgb", {}, 3),
    "folder_gray_rgb_unet": ("gray", rgb_unet(8), 1),
    "cifar10_gray_unet": ("cifar10", {"model": {"unet": {"sample_size": 32}}}, 3),
    "digits_rgb_unet": ("digits", rgb_unet(8), 1),
}


@pytest.mark.parametrize("case", list(CHANNELS))
def test_image_channels_must_match_the_unet(tmp_path, case):
    source, model, channels = CHANNELS[case]
    folder = tmp_path / "folder"
    folder.mkdir()
    names = ["model.unet.in_channels"]
    if isinstance(source, dict):
        arrays = {}
        for key, shape in source.items():
            prefix = key.removesuffix("images")
            arrays |= {f"{prefix}{k}": v for k, v in digits_like(40, shape).items()}
        path = write_npz(tmp_path / "c.npz", **arrays)
        config, names = npz_config(tmp_path, path, model), [*names, path]
    elif source in ("rgb", "gray"):
        data = {"source": "image_folder", "path": str(folder), "resolution": 8, "color": source}
        config, names = configured(tmp_path, {"data": data}, model), [*names, f"data.color {source}"]
    else:
        data = {"source": source, "path": str(folder) if source == "cifar10" else None}
        config = configured(tmp_path, {"data": data}, model)
    message = assert_refused(config, *names)
    assert message.endswith(f"have {channels} channel(s).")


POOLS = [
    ("lds_empty", {"subsets": {"pools": {"lds": {"count": 0}}}}, "subsets.pools.lds.count", 0),
    ("lds_single", {"subsets": {"pools": {"lds": {"count": 1}}}}, "subsets.pools.lds.count", 1),
    ("lds_pool_select", {"evaluation": {"lds": {"pool": "select"}}, "subsets": {"pools": {"select": {"count": 1}}}},
     "subsets.pools.select.count", 1),
    ("select_single_trak", {"evaluation": {"methods": ["pixel_l2", "trak"]}, "subsets": {"pools": {"select": {"count": 1}}}},
     "subsets.pools.select.count", 1),
    ("select_empty_das", {"evaluation": {"methods": ["das"]}, "subsets": {"pools": {"select": {"count": 0}}}},
     "subsets.pools.select.count", 0),
]


@pytest.mark.parametrize("name,layer,key,count", POOLS, ids=[p[0] for p in POOLS])
def test_the_lds_and_select_pools_need_two_subsets(tmp_path, name, layer, key, count):
    assert f"'{key}' is {count}," in assert_refused(configured(tmp_path, layer), key)
    if name.startswith("select"):  # the same pool is fine when no kernel method selects λ on it
        methods = {"evaluation": {"methods": ["pixel_l2", "random", "grad_dot"]}, "counterfactual": {"methods": []}}
        check_config(configured(tmp_path, layer, methods), SCHEMA)


SIZES = [
    ("n_train_digits", {"n_train": 5000}, "data.n_train", N_DIGITS - 200),
    ("n_attributed_digits", {"n_attributed": N_DIGITS}, "data.n_attributed", N_DIGITS),
    ("n_base_digits", {"n_base": N_DIGITS - 200}, "data.n_base", N_DIGITS - 200),
    ("n_train_after_base", {"n_base": 500, "n_train": 1200}, "data.n_train", N_DIGITS - 200 - 500),
    ("n_train_classes", {"classes": ["3", "5"], "n_train": 300}, "data.n_train", 183 + 182 - 200),
    ("n_train_npz", {"n_train": 100}, "data.n_train", 80),
    ("n_attributed_npz_split", {"n_attributed": 31}, "data.n_attributed", 30),
]


@pytest.mark.parametrize("name,data,key,available", SIZES, ids=[s[0] for s in SIZES])
def test_sizes_larger_than_the_data_are_refused_with_the_image_count(tmp_path, name, data, key, available):
    """``available``: the images that key can have, counted independently of diffattr (digits classes
    3 and 5 have 183 and 182 images in scikit-learn's set)."""
    if name == "n_train_npz":
        config = npz_config(tmp_path, write_npz(tmp_path / "d.npz", **digits_like(100)), {"data": data})
    elif name == "n_attributed_npz_split":
        arrays = {f"{s}_{k}": v for s, n in (("train", 60), ("test", 30)) for k, v in digits_like(n).items()}
        config = npz_config(tmp_path, write_npz(tmp_path / "s.npz", **arrays), {"data": data})
    else:
        config = configured(tmp_path, {"data": {**data, "n_attributed": data.get("n_attributed", 200)}})
    assert_refused(config, key, f" {available} ")


NPZ_CONTENT = {
    "no_images_key": ({"pictures": np.zeros((40, 8, 8), np.uint8)}, "'pictures'"),
    "train_without_test": ({"train_images": np.zeros((40, 8, 8), np.uint8)}, "'train_images'"),
    "labels_too_short": ({"images": np.zeros((40, 8, 8), np.uint8), "labels": np.zeros(39, np.int64)}, "'labels'"),
    "labels_2d": ({"images": np.zeros((40, 8, 8), np.uint8), "labels": np.zeros((40, 1), np.int64)}, "'labels'"),
    "labels_negative": ({"images": np.zeros((40, 8, 8), np.uint8), "labels": np.arange(40) - 1}, "-1"),
    "labels_fractional": ({"images": np.zeros((40, 8, 8), np.uint8), "labels": np.arange(40) / 2}, "0.5"),
    "labels_text": ({"images": np.zeros((40, 8, 8), np.uint8), "labels": np.array(["a"] * 40)}, "'labels'"),
    "images_float": ({"images": np.zeros((40, 8, 8), np.float32)}, "float32"),
    "images_2d": ({"images": np.zeros((40, 64), np.uint8)}, "(40, 64)"),
    "class_names_too_few": ({"images": np.zeros((40, 8, 8), np.uint8), "labels": np.arange(40) % 4,
                             "class_names": np.array(["a", "b"])}, "'class_names'"),
    "class_names_numbers": ({"images": np.zeros((40, 8, 8), np.uint8), "class_names": np.arange(3)}, "'class_names'"),
    "not_an_archive": (None, "not a readable .npz archive"),
}


@pytest.mark.parametrize("case", list(NPZ_CONTENT))
def test_npz_with_wrong_arrays_or_labels_is_refused(tmp_path, case):
    arrays, detail = NPZ_CONTENT[case]
    path = tmp_path / "bad.npz"
    if arrays is None:
        path.write_text("images,labels\n")
    else:
        write_npz(path, **arrays)
    assert_refused(npz_config(tmp_path, str(path)), "data.path", str(path), detail)


@pytest.mark.parametrize("where", ["itself", "parent"])
def test_output_dir_must_not_be_a_file(tmp_path, where):
    file = tmp_path / "results"
    file.write_text("finished work\n")
    out = file if where == "itself" else file / "run"
    message = refusal(merge_configs(DEFAULT, {"output_dir": str(out)}))
    assert message.startswith(f"Config key 'output_dir' is '{out}',") and f"{file}" in message
    assert file.read_text() == "finished work\n"  # left as it was


def yaml_case(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A broken config file and the sentence's tail after the file's name, located independently."""
    path = tmp_path / "bad.yaml"
    if case == "mapping_in_value":
        lines = ["output_dir: x", "train:", "  steps: 5: 6"]
        path.write_text("\n".join(lines) + "\n")
        return path, f" is not valid YAML: line 3, column {lines[2].rindex(':') + 1}: mapping values are not allowed here."
    if case == "tab_indent":
        path.write_text("output_dir: x\ntrain:\n\tsteps: 5\n")
        return path, " is not valid YAML: line 3, column 1: found character '\\t' that cannot start any token."
    if case == "unclosed_list":
        lines = ["output_dir: x", "train:", "  checkpoint_fractions: [0.5, 1.0", "  steps: 5"]
        path.write_text("\n".join(lines) + "\n")
        return path, f" is not valid YAML: line 4, column {lines[3].index(':') + 1}: expected ',' or ']', but got ':'."
    if case == "not_utf8":
        path.write_bytes(b"output_dir: r\xe9sultats\n")
        return path, f" is not valid YAML: byte {len('output_dir: r')}: it is not UTF-8 text."
    path.write_text("- output_dir\n- x\n")
    return path, " must hold a mapping of config keys, not a list."


@pytest.mark.parametrize("case", ["mapping_in_value", "tab_indent", "unclosed_list", "not_utf8", "list"])
@pytest.mark.parametrize("which", ["configfile", "workflow_config"])
def test_cli_names_the_yaml_file_and_line_before_starting_snakemake(tmp_path, monkeypatch, capsys, case, which):
    """``diffattr dry-run --config bad.yaml`` (named as given) and a broken workflow config.yaml (named
    by its path): exit 2, one sentence, Snakemake never started, nothing written."""
    import diffattr.cli

    def no_snakemake(*args, **kwargs):
        raise AssertionError("snakemake was started")

    monkeypatch.setattr(diffattr.cli.subprocess, "Popen", no_snakemake)
    path, tail = yaml_case(tmp_path, case)
    if which == "configfile":
        monkeypatch.chdir(tmp_path)
        argv, name = ["dry-run", "--config", path.name], path.name
    else:
        (tmp_path / "Snakefile").write_text("# a workflow directory\n")
        path = path.rename(tmp_path / "config.yaml")
        argv, name = ["dry-run", "--workdir", str(tmp_path)], str(path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"diffattr: error: Config file '{name}'{tail}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["Snakefile", "config.yaml"] if which != "configfile"
                                                                else [path.name])


def checkpoint_sweep(value: float) -> dict:
    return {"sweeps": {"dtrak_checkpoint": {"method": "dtrak", "key": "checkpoint", "values": [value]}}}


CHECKPOINTS = [
    ("spec", {"features": {"square": {"checkpoint": 0.3}}}, "features.square.checkpoint", 0.3),
    ("gradient_list", {"features": {"loss_c75": {"checkpoint": 0.7}}}, "features.loss_c75.checkpoint", 0.7),
    ("sweep_derived", checkpoint_sweep(0.6), "features.square__checkpoint0_6.checkpoint", 0.6),
    ("fractions_shrunk", {"train": {"checkpoint_fractions": [0.5, 1.0]}}, "features.loss_c25.checkpoint", 0.25),
]


@pytest.mark.parametrize("name,layer,key,fraction", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_feature_checkpoints_must_be_saved_ones(tmp_path, name, layer, key, fraction):
    """Every spec a method with jobs reads (sweep-derived ones too) is checked at config time; a spec
    no such method reads is not (smoke.yaml inherits loss_c25 with fractions [0.5, 1.0])."""
    message = assert_refused(configured(tmp_path, layer), key)
    assert message.startswith(f"Config key '{key}' is {fraction},")
    fractions = [0.25, 0.5, 0.75, 1.0] if name != "fractions_shrunk" else [0.5, 1.0]
    steps = 500
    assert round(fraction * steps) not in {max(1, round(f * steps)) for f in fractions}  # independently: not saved
    check_config(configured(tmp_path, layer, {"evaluation": {"methods": ["pixel_l2", "grad_dot"]},
                                              "counterfactual": {"methods": []}, "sweeps": None}), SCHEMA)


@pytest.mark.parametrize("layer", [{"evaluation": {"methods": []}},
                                   {"evaluation": {"methods": []}, "counterfactual": {"methods": []}, "sweeps": None}])
def test_an_empty_method_list_is_refused_not_read_as_every_method(tmp_path, layer):
    assert refusal(configured(tmp_path, layer)) == (
        "Config key 'evaluation.methods' is empty; leave the key out (null) to evaluate every method, "
        "or name at least one.")
    check_config(configured(tmp_path, {"evaluation": {"methods": None}}), SCHEMA)  # null: every method


def fake_model_dir(root: Path, weights: str) -> Path:
    """A directory laid out as save_pretrained writes it, its weights file empty (only names are checked)."""
    root.mkdir(parents=True)
    (root / "config.json").write_text("{}")
    (root / weights).write_bytes(b"")
    return root


@pytest.mark.parametrize("weights,refused", [("pytorch_model.bin", True), ("model.safetensors", False)])
def test_a_pickle_only_clip_directory_is_refused_before_any_job(tmp_path, weights, refused):
    clip = fake_model_dir(tmp_path / "clip", weights)
    config = configured(tmp_path, {"methods": {"clip_cos": {"kind": "embedding", "encoder": "clip", "path": str(clip),
                                                              "similarity": "cosine"}},
                                   "evaluation": {"methods": ["clip_cos"]}, "counterfactual": {"methods": []},
                                   "sweeps": None})
    if refused:
        assert_refused(config, "methods.clip_cos.path", "pytorch_model.bin")
    else:
        check_config(config, SCHEMA)


@pytest.mark.parametrize("weights,refused", [("diffusion_pytorch_model.bin", True),
                                             ("diffusion_pytorch_model.safetensors", False)])
def test_a_pickle_only_pipeline_is_refused_before_any_job(tmp_path, weights, refused):
    pipeline = tmp_path / "pipe"
    fake_model_dir(pipeline / "unet", weights)
    fake_model_dir(pipeline / "vae", "diffusion_pytorch_model.safetensors")
    fake_model_dir(pipeline / "text_encoder", "model.safetensors")
    (pipeline / "tokenizer").mkdir()
    (pipeline / "tokenizer" / "tokenizer_config.json").write_text("{}")
    config = merge_configs(configured(tmp_path), load_yaml(REPO / "config" / "text_to_image.yaml"),
                           {"output_dir": str(tmp_path / "out"),
                            "model": {"text_to_image": {"pipeline_path": str(pipeline)}}})
    if refused:
        assert_refused(config, "model.text_to_image.pipeline_path", "diffusion_pytorch_model.bin")
    else:
        check_config(config, SCHEMA)


# --- the real CLI: our sentence is the first line naming the problem, and no frame of diffattr/ -----

WORKFLOW_CASES = {
    "npz_size": ("model.unet.sample_size", "are 16×16."),
    "n_train": ("data.n_train", f"only {N_DIGITS - 200} training images"),
    "empty_methods": ("evaluation.methods", "is empty;"),
    "lds_single": ("subsets.pools.lds.count", "is 1,"),
    "output_file": ("output_dir", "is an existing file, not a directory."),
}


@pytest.mark.workflow
def test_snakemake_dry_run_prints_our_sentence_first_and_no_diffattr_frame(tmp_path):
    npz = write_npz(tmp_path / "big.npz", **digits_like(50, (16, 16)))
    (tmp_path / "file").write_text("x\n")
    layers = {
        "npz_size": {**NPZ, "data": {**NPZ["data"], "path": npz}},
        "n_train": {"data": {"n_train": 5000}},
        "empty_methods": {"evaluation": {"methods": []}},
        "lds_single": {"subsets": {"pools": {"lds": {"count": 1, "seeds": [0]}}}},
        "output_file": {"output_dir": str(tmp_path / "file")},
    }
    runs = [("-n", "--configfile", overlay(tmp_path, name, {"output_dir": str(tmp_path / name), **layer}))
            for name, layer in layers.items()]
    for (name, (key, phrase)), result in zip(WORKFLOW_CASES.items(), snakemake_concurrently(runs, timeout=120)):
        log = result.stderr + result.stdout  # Snakemake 9 logs its errors to stdout
        assert result.returncode != 0, name
        first = next(line for line in log.splitlines() if key in line)
        assert first.startswith(f"Config key '{key}'") and phrase in first, (name, first)
        assert not re.search(r'File ".*diffattr/', log), log
        assert "Traceback" not in log
        assert "rule prepare_data" not in result.stdout
        assert not (tmp_path / name).exists() or name == "output_file"


@pytest.mark.parametrize("data,key,words", [
    ({"n_attributed": 8}, "data.n_attributed", "fewer than the 10 classes"),
    ({"n_attributed": 1790}, "data.n_attributed", "use at most 1787"),
    ({"n_attributed": 10, "n_train": 5}, "data.n_train", "fewer than the 10 classes"),
    ({"n_attributed": 10, "n_train": 1785}, "data.n_train", "use at most 1777"),
], ids=["n_attributed_small", "n_attributed_large", "n_train_small", "n_train_large"])
def test_a_stratified_draw_needs_one_image_per_class_on_both_sides(tmp_path, data, key, words):
    """prepare_data draws val, base and train with sklearn's stratified train_test_split, which fails
    (after DAG build, with its own traceback) unless both sides hold every class; the config says so first."""
    from sklearn.model_selection import train_test_split

    from diffattr.data.digits import load_digits_pools

    labels = load_digits_pools()["all"].labels
    layer = {"data": data, "counterfactual": {"methods": []}, "sweeps": None,
             "evaluation": {"methods": ["pixel_l2"]}, "report": {"samples": [0], "methods": []}}
    assert_refused(configured(tmp_path, layer), key, words)
    rows = np.arange(len(labels))
    first = data["n_attributed"]
    with pytest.raises(ValueError):  # the independent fact the check anticipates
        if key == "data.n_attributed":
            train_test_split(rows, test_size=first, stratify=labels, random_state=0)
        else:
            _, rest = train_test_split(rows, test_size=first, stratify=labels, random_state=0)
            train_test_split(rest, train_size=data["n_train"], stratify=labels[rest], random_state=0)


@pytest.mark.workflow
def test_plain_snakemake_names_the_line_of_a_broken_config_yaml(tmp_path):
    """Snakemake's own message for a broken config.yaml names neither file nor line; the Snakefile
    checks it first (a copy of the workflow whose config.yaml is broken at line 4)."""
    import shutil
    import subprocess
    import sys

    for name in ("Snakefile", "rules", "schemas", "report", "envs", "workflow_scripts"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, tmp_path / name)
    (tmp_path / "config.yaml").write_text("output_dir: results\ndata:\n  source: digits\n bad: [\n")
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Config file 'config.yaml' is not valid YAML: line 4, column 2:" in output, output
    assert "diffattr/" not in output.split("is not valid YAML")[1], output  # no frame of the package
