"""Nothing pickled ever runs: every loader refuses a pickle payload in one sentence naming the file.

Each payload below creates a marker file when it is unpickled (``builtins.open(marker, "w")`` or
``os.system("touch marker")``). :func:`test_the_payloads_run_when_unpickled` proves that they do, so
every "marker never appears" assertion below could fail; the positive controls prove that the checks
still let safetensors (and plain CIFAR-10 batches and npz arrays) through.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY_UNET as DDPM_UNET
from diffattr.data.cifar10 import CifarBatchError, load_cifar10_pools
from diffattr.data.npz import NpzError, load_npz_pools
from diffattr.methods.embedding import EmbeddingConfig, embed, load_clip
from diffattr.models.ddpm import build_unet, load_unet, save_weights
from diffattr.models.text_to_image import (
    TextToImageConfig,
    add_lora,
    build_components,
    components,
    load_components,
    load_lora,
    save_components,
)
from diffattr.models.weights import CONVERT_HINT, MissingModelError, ModelDirectoryError, check_pipeline_dir
from test_text_to_image import CFG, WORDS


class OpensMarker:
    """Unpickling calls ``open(marker, "w")``, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (open, (self.marker, "w"))


class TouchesMarker:
    """Unpickling calls ``os.system("touch marker")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.system, (f"touch '{self.marker}'",))


def builtins_open_pickle(marker: Path) -> bytes:
    """A hand-written protocol-0 pickle whose GLOBAL opcode names ``builtins.open``: open(marker, "w")."""
    return b"cbuiltins\nopen\n(V" + str(marker).encode() + b"\nVw\ntR."


def malicious_weights(path: Path, marker: Path) -> Path:
    """A ``torch.save``-style pickle of a state dict whose one tensor is a payload."""
    with path.open("wb") as f:
        pickle.dump({"conv_in.weight": OpensMarker(marker)}, f, protocol=2)
    return path


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


@pytest.fixture(scope="module")
def built():
    return build_components(CFG, WORDS, 0)


@pytest.fixture()
def pipeline(tmp_path: Path, built) -> Path:
    save_components(built, tmp_path / "pipe")
    return tmp_path / "pipe"


def test_the_payloads_run_when_unpickled(tmp_path):
    """The control: plain unpickling of each payload does create its marker."""
    for kind in (OpensMarker, TouchesMarker):
        marker = tmp_path / kind.__name__
        pickle.loads(pickle.dumps(kind(marker)))
        assert marker.exists()
    pickle.loads(builtins_open_pickle(tmp_path / "builtins"))
    assert (tmp_path / "builtins").exists()
    bin_marker = tmp_path / "bin"
    with malicious_weights(tmp_path / "w.bin", bin_marker).open("rb") as f:
        pickle.load(f)
    assert bin_marker.exists()
    np.savez(tmp_path / "o.npz", images=np.array([OpensMarker(tmp_path / "npz")], dtype=object))
    with np.load(tmp_path / "o.npz", allow_pickle=True) as archive:
        archive["images"]
    assert (tmp_path / "npz").exists()


# ------------------------------------------------------------------------------ text-to-image pipeline


WEIGHTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}


@pytest.mark.parametrize("sub", sorted(WEIGHTS))
def test_a_pipeline_component_with_only_malicious_pickle_weights_is_refused(pipeline, sub, marker):
    folder = pipeline / sub
    (folder / f"{WEIGHTS[sub]}.safetensors").unlink()
    bin_name = "pytorch_model.bin" if sub == "text_encoder" else "diffusion_pytorch_model.bin"
    malicious_weights(folder / bin_name, marker)
    expected = (f"Model directory '{folder}' holds its weights only as '{bin_name}', a pickle file diffattr will "
                f"not load; convert it to safetensors ({CONVERT_HINT}).")
    with pytest.raises(ModelDirectoryError) as err:
        load_components(pipeline)
    assert str(err.value) == expected
    with pytest.raises(ModelDirectoryError, match="a pickle file diffattr will not load"):
        components(TextToImageConfig(pipeline_path=str(pipeline)), [], 0)
    with pytest.raises(ValueError, match=bin_name):
        check_pipeline_dir(pipeline)
    assert not marker.exists()


def test_a_unet_saved_with_safe_serialization_false_is_refused(pipeline, built):
    shutil.rmtree(pipeline / "unet")
    built.unet.save_pretrained(pipeline / "unet", safe_serialization=False)
    assert sorted(p.name for p in (pipeline / "unet").iterdir()) == ["config.json", "diffusion_pytorch_model.bin"]
    with pytest.raises(ModelDirectoryError, match=r"'diffusion_pytorch_model\.bin', a pickle file"):
        load_components(pipeline)


def test_a_stray_pickle_beside_safetensors_is_never_read(pipeline, built, marker, monkeypatch):
    """The positive control: safetensors load (the same weights) even with a malicious .bin beside
    them, and ``torch.load`` is never called."""
    for sub, stem in WEIGHTS.items():
        bin_name = "pytorch_model.bin" if sub == "text_encoder" else f"{stem}.bin"
        malicious_weights(pipeline / sub / bin_name, marker)
    calls: list[tuple] = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    loaded = load_components(pipeline)
    assert calls == [] and not marker.exists()
    for name in WEIGHTS:
        ours, theirs = getattr(built, name).state_dict(), getattr(loaded, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_directories_without_config_or_weights_are_refused_in_one_sentence(pipeline):
    (pipeline / "vae" / "config.json").unlink()
    with pytest.raises(MissingModelError) as err:
        load_components(pipeline)
    assert str(err.value) == (f"Model directory '{pipeline / 'vae'}' has no config.json, so it is not a directory "
                              f"written by save_pretrained.")
    assert isinstance(err.value, ValueError) and isinstance(err.value, FileNotFoundError)
    (pipeline / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelDirectoryError) as err:
        load_components(pipeline)
    assert str(err.value) == f"Model directory '{pipeline / 'unet'}' holds no *.safetensors weights."
    shutil.rmtree(pipeline / "text_encoder")
    with pytest.raises(MissingModelError, match=r"lacks the subfolders \['text_encoder'\]"):
        load_components(pipeline)


def test_a_tokenizer_folder_with_a_pickle_file_is_refused(pipeline, marker):
    malicious_weights(pipeline / "tokenizer" / "vocab.pkl", marker)
    with pytest.raises(ModelDirectoryError) as err:
        load_components(pipeline)
    assert str(err.value).startswith(f"Tokenizer directory '{pipeline / 'tokenizer'}' holds 'vocab.pkl', a pickle file")
    (pipeline / "tokenizer" / "vocab.pkl").unlink()
    (pipeline / "tokenizer" / "tokenizer_config.json").unlink()
    with pytest.raises(MissingModelError, match="has no tokenizer_config.json"):
        load_components(pipeline)
    assert not marker.exists()


def test_a_pickled_lora_file_is_refused(tmp_path, marker):
    unet = build_components(CFG, WORDS, 0).unet
    add_lora(unet, CFG.lora, 0)
    for name in ("lora.bin", "lora.safetensors"):  # the name does not matter: the bytes are a pickle
        path = malicious_weights(tmp_path / name, marker)
        with pytest.raises(ModelDirectoryError) as err:
            load_lora(unet, path)
        assert str(err.value).startswith(f"Checkpoint '{path}' is a pickle file, which diffattr will not load;")
    assert not marker.exists()


# ---------------------------------------------------------------------------------- CLIP and DDPM


@pytest.fixture()
def clip_dir(tmp_path: Path) -> Path:
    import transformers

    config = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=16, patch_size=8, projection_dim=8)
    torch.manual_seed(0)
    transformers.CLIPVisionModelWithProjection(config).save_pretrained(str(tmp_path / "clip"))
    return tmp_path / "clip"


def test_a_clip_directory_holding_only_a_malicious_bin_is_refused(clip_dir, marker):
    images = np.zeros((1, 1, 16, 16), np.float32)
    reference = embed(images, EmbeddingConfig(encoder="clip", path=str(clip_dir)))  # positive control
    assert reference.shape == (1, 8)
    (clip_dir / "model.safetensors").unlink()
    malicious_weights(clip_dir / "pytorch_model.bin", marker)
    with pytest.raises(ModelDirectoryError) as err:
        embed(images, EmbeddingConfig(encoder="clip", path=str(clip_dir)))
    assert str(err.value) == (f"Model directory '{clip_dir}' holds its weights only as 'pytorch_model.bin', a pickle "
                              f"file diffattr will not load; convert it to safetensors ({CONVERT_HINT}).")
    with pytest.raises(ModelDirectoryError, match="pytorch_model.bin"):
        load_clip(clip_dir)
    assert not marker.exists()


def test_a_pickled_ddpm_checkpoint_is_refused(tmp_path, marker):
    good = tmp_path / "good.safetensors"
    model = build_unet(DDPM_UNET)
    save_weights(model, good, {})
    assert torch.equal(load_unet(good, DDPM_UNET).conv_in.weight, model.conv_in.weight)  # positive control
    for pad in range(0, 512, 8):  # a safetensors header length whose low byte is 0x80, a pickle's first byte
        save_weights(model, good, {"pad": "x" * pad})
        if good.read_bytes()[0] == 0x80:
            break
    assert good.read_bytes()[0] == 0x80
    assert torch.equal(load_unet(good, DDPM_UNET).conv_in.weight, model.conv_in.weight)
    torch.save(model.state_dict(), tmp_path / "zip.safetensors")  # torch.save's zip format under any name
    pickled = [malicious_weights(tmp_path / name, marker) for name in ("step.ckpt", "s.safetensors")]
    for path in [*pickled, tmp_path / "zip.safetensors"]:
        with pytest.raises(ModelDirectoryError) as err:
            load_unet(path, DDPM_UNET)
        assert str(err.value).startswith(f"Checkpoint '{path}' is a pickle file, which diffattr will not load;")
    with pytest.raises(ModelDirectoryError, match="step.ckpt"):
        embed(np.zeros((1, 1, 8, 8), np.float32), EmbeddingConfig(encoder="ddpm", path=str(tmp_path / "step.ckpt")),
              unet_config=DDPM_UNET)
    assert not marker.exists()


# ------------------------------------------------------------------------------------ data files


def cifar_folder(root: Path, per_batch: int = 4) -> Path:
    """A CIFAR-10 batch folder in the authors' format (bytes keys, numpy arrays, lists)."""
    root.mkdir()
    rng = np.random.default_rng(0)
    with (root / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with (root / name).open("wb") as f:
            pickle.dump({b"labels": list(range(per_batch)), b"data": data}, f)
    return root


PAYLOADS = {
    "io.open": lambda marker: pickle.dumps({b"labels": [0], b"data": OpensMarker(marker)}),
    "builtins.open": builtins_open_pickle,
    f"{os.name}.system": lambda marker: pickle.dumps({b"labels": [0], b"data": TouchesMarker(marker)}),
}


@pytest.mark.parametrize("refers", sorted(PAYLOADS))
def test_a_malicious_cifar_batch_is_refused_and_nothing_runs(tmp_path, marker, refers):
    folder = cifar_folder(tmp_path / "cifar")
    assert len(load_cifar10_pools(str(folder))["train"].labels) == 20  # positive control
    batch = folder / "data_batch_1"
    batch.write_bytes(PAYLOADS[refers](marker))
    with pytest.raises(CifarBatchError) as err:
        load_cifar10_pools(str(folder))
    assert str(err.value) == (f"CIFAR-10 batch file '{batch}' refers to {refers}, which a CIFAR-10 batch never holds, "
                              f"so diffattr refuses it without running it.")
    assert not marker.exists()


def test_a_truncated_or_foreign_cifar_batch_is_one_sentence(tmp_path):
    folder = cifar_folder(tmp_path / "cifar")
    batch = folder / "test_batch"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(CifarBatchError, match=f"CIFAR-10 batch file '{batch}' is not a python-pickle batch"):
        load_cifar10_pools(str(folder))
    with batch.open("wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8)}, f)
    with pytest.raises(CifarBatchError, match=r"lacks the entries \['labels'\]"):
        load_cifar10_pools(str(folder))


@pytest.mark.parametrize("key", ["images", "labels", "class_names"])
def test_an_object_array_npz_is_refused_and_nothing_runs(tmp_path, marker, key):
    arrays = {"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, 1]), "class_names": np.array(["a", "b"])}
    np.savez(tmp_path / "good.npz", **arrays)
    assert load_npz_pools(str(tmp_path / "good.npz"))["all"].class_names == ["a", "b"]  # positive control
    path = tmp_path / "evil.npz"
    np.savez(path, **{**arrays, key: np.array([OpensMarker(marker), 1], dtype=object)})
    with pytest.raises(NpzError) as err:
        load_npz_pools(str(path))
    assert str(err.value) == (f"Array '{key}' of data file '{path}' is an object array, which diffattr will not load "
                              f"(reading it would unpickle); save it with a numeric or string dtype.")
    assert not marker.exists()


def test_a_pickle_or_npy_posing_as_npz_is_refused(tmp_path, marker):
    path = tmp_path / "evil.npz"
    with path.open("wb") as f:
        pickle.dump({"images": OpensMarker(marker)}, f)
    with pytest.raises(NpzError) as err:
        load_npz_pools(str(path))
    assert str(err.value) == (f"Data file '{path}' is not an .npz archive of plain arrays, so diffattr will not "
                              f"load it (ValueError).")
    np.save(tmp_path / "one.npy", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(NpzError, match="holds a single .npy array"):
        load_npz_pools(str(tmp_path / "one.npy"))
    assert not marker.exists()


def test_dag_time_npz_sizes_run_nothing(tmp_path, marker):
    """diffattr.data.sizes reads npz labels at DAG time; an object array there fails without running."""
    from diffattr.data.sizes import split_sizes

    path = tmp_path / "evil.npz"
    np.savez(path, images=np.zeros((3, 4, 4), np.uint8), labels=np.array([OpensMarker(marker), 1, 0], dtype=object))
    with pytest.raises(ValueError):
        split_sizes({"source": "npz", "path": str(path), "n_attributed": 1}, {"count": 1})
    assert not marker.exists()
