"""diffattr.models.diffusers_dir: a diffusers DDPM directory in, our checkpoint out, and back (issue 16).

The independent references: the model we saved (its tensors and ε predictions), diffusers' own
``from_pretrained`` of the written directory, and diffusers' schedulers built from the written configs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import REPO
from diffattr.models import diffusers_dir as dd
from diffattr.models.ddpm import alphas_cumprod, build_scheduler, build_unet, load_unet, save_weights
from diffattr.models.diffusers_classes import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffattr.models.weights import ModelDirectoryError

SCHEDULER = yaml.safe_load((REPO / "config.yaml").read_text())["model"]["scheduler"]


def tiny_unet_config() -> dict:
    """config.yaml's ``model.unet`` with tests/configs/tiny.yaml's keys over it."""
    base = yaml.safe_load((REPO / "config.yaml").read_text())["model"]["unet"]
    return {**base, **yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())["model"]["unet"]}


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` with every parameter and buffer moved by seeded noise (no zero-initialised layer left)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=gen))
    return model.eval()


def eps(model: torch.nn.Module, shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    """ε predictions of ``model`` on seeded random x_t and t."""
    gen = torch.Generator().manual_seed(seed)
    x, t = torch.randn((5, *shape), generator=gen), torch.randint(0, 1000, (5,), generator=gen)
    with torch.no_grad():
        return model(x, t).sample


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes (what a refusal must leave untouched)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and "Traceback" not in message


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, torch.nn.Module]:
    """Our checkpoint of a seeded tiny UNet: (path, unet config, the model)."""
    config = tiny_unet_config()
    model = randomised(build_unet(config), seed=0)
    path = tmp_path_factory.mktemp("ours") / "model.safetensors"
    save_weights(model, path, {"unet": config})
    return path, config, model


@pytest.fixture(scope="module")
def exported(ours, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The checkpoint exported in both layouts."""
    checkpoint, config, _ = ours
    root = tmp_path_factory.mktemp("exported")
    dd.export_unet(checkpoint, config, SCHEDULER, root / "unet_dir")
    dd.export_unet(checkpoint, config, SCHEDULER, root / "pipeline_dir", pipeline=True)
    return {"unet": root / "unet_dir", "pipeline": root / "pipeline_dir"}


def test_tiny_config_is_the_test_tier_model():
    assert tiny_unet_config()["block_out_channels"] == [8, 16] and tiny_unet_config()["norm_num_groups"] == 4


@pytest.mark.parametrize("layout", ["unet", "pipeline"])
def test_round_trip_is_bit_identical(ours, exported, layout, tmp_path):
    checkpoint, config, model = ours
    model_dir = dd.read_model_dir(exported[layout])
    assert model_dir.layout == layout
    assert model_dir.sample_size == (config["sample_size"],) * 2 and model_dir.in_channels == config["in_channels"]
    assert model_dir.scheduler_config == SCHEDULER
    assert {k: model_dir.unet_config[k] for k in config} == config  # every key of our block, as we set it
    assert not any(k.startswith("_") for k in model_dir.unet_config)
    dd.import_unet(model_dir, tmp_path / "imported.safetensors")

    original, imported = load_file(checkpoint), load_file(tmp_path / "imported.safetensors")
    assert sorted(original) == sorted(imported)
    assert all(torch.equal(original[k], imported[k]) for k in original)
    reloaded = load_unet(tmp_path / "imported.safetensors", model_dir.unet_config)
    shape = (config["in_channels"], config["sample_size"], config["sample_size"])
    assert (eps(reloaded, shape) - eps(model, shape)).abs().max().item() == 0.0
    # diffusers' own loader reads the exported directory as the same model
    theirs = UNet2DModel.from_pretrained(model_dir.unet_dir, use_safetensors=True, local_files_only=True).eval()
    assert (eps(theirs, shape) - eps(model, shape)).abs().max().item() == 0.0


def test_exports_are_safetensors_only_and_open_in_diffusers(exported):
    from diffusers import DDPMPipeline

    for root in exported.values():
        suffixes = {p.suffix for p in root.rglob("*") if p.is_file()}
        assert suffixes == {".json", ".safetensors"}
    index = json.loads((exported["pipeline"] / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline" and index["unet"] == ["diffusers", "UNet2DModel"]
    pipeline = DDPMPipeline.from_pretrained(exported["pipeline"], use_safetensors=True, local_files_only=True)
    assert torch.equal(pipeline.scheduler.alphas_cumprod, build_scheduler(SCHEDULER).alphas_cumprod)


@pytest.mark.parametrize("schedule", [
    {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    {"num_train_timesteps": 500, "beta_schedule": "scaled_linear", "beta_start": 8.5e-4, "beta_end": 0.012},
    {"num_train_timesteps": 250, "beta_schedule": "squaredcos_cap_v2"},
])
def test_scheduler_read_back_gives_the_same_alphas_cumprod(exported, schedule, tmp_path):
    root = shutil.copytree(exported["unet"], tmp_path / "model")
    shutil.rmtree(root / "scheduler")
    build_scheduler(schedule).save_pretrained(root)  # the other accepted place: beside config.json
    model_dir = dd.read_model_dir(root)
    assert model_dir.scheduler_file == root / "scheduler_config.json"
    assert set(model_dir.scheduler_config) <= set(dd.NOISE_KEYS)
    written = json.loads((root / "scheduler_config.json").read_text())  # what diffusers wrote, read back by it
    expected = DDPMScheduler.from_config(written).alphas_cumprod.to(torch.float32)
    assert torch.equal(alphas_cumprod(model_dir.scheduler_config), expected)
    assert torch.equal(alphas_cumprod(model_dir.scheduler_config), alphas_cumprod(schedule))


def test_a_users_settings_outside_our_block_are_kept(tmp_path):
    """A model saved by diffusers with arguments config.yaml's block never sets (attention, scale-shift
    norm, flipped sinusoids, mish, a resnet downsampler, a (H, W) sample size) comes back the same."""
    settings = dict(sample_size=[8, 8], in_channels=3, out_channels=3, block_out_channels=[8, 16], layers_per_block=1,
                    norm_num_groups=4, down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                    up_block_types=["AttnUpBlock2D", "UpBlock2D"], attention_head_dim=4, flip_sin_to_cos=False,
                    freq_shift=1, resnet_time_scale_shift="scale_shift", act_fn="mish", downsample_type="resnet",
                    mid_block_scale_factor=2)
    user = randomised(UNet2DModel(**settings), seed=3)
    user.save_pretrained(tmp_path / "user")
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(tmp_path / "user" / "scheduler")
    model_dir = dd.read_model_dir(tmp_path / "user")
    assert model_dir.sample_size == (8, 8) and model_dir.in_channels == 3
    assert {k: model_dir.unet_config[k] for k in settings} == settings
    dd.import_unet(model_dir, tmp_path / "imported.safetensors")
    reloaded = load_unet(tmp_path / "imported.safetensors", model_dir.unet_config)
    assert (eps(reloaded, (3, 8, 8)) - eps(user, (3, 8, 8))).abs().max().item() == 0.0
    # the check has teeth: dropping one setting the weights do not reveal changes the predictions
    dropped = build_unet({k: v for k, v in model_dir.unet_config.items() if k != "flip_sin_to_cos"})
    dropped.load_state_dict(reloaded.state_dict())
    assert (eps(dropped.eval(), (3, 8, 8)) - eps(user, (3, 8, 8))).abs().max().item() > 1e-3


def test_sampler_table_is_diffattrs_sampler():
    sampler = DDIMScheduler.from_config(build_scheduler(SCHEDULER).config).config  # diffattr.sample's construction
    assert {k: sampler[k] for k in dd.SAMPLER_DEFAULTS} == dd.SAMPLER_DEFAULTS


def test_check_sampler(exported, tmp_path):
    dd.check_sampler(dd.read_model_dir(exported["pipeline"]))  # our own export samples as we do
    root = shutil.copytree(exported["pipeline"], tmp_path / "model")
    ddim = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False)
    ddim.save_pretrained(root / "scheduler")
    model_dir = dd.read_model_dir(root)  # attributing given images needs no sampler: read, not refused
    assert dd.sampler_differences(model_dir) == {"clip_sample": (False, True), "set_alpha_to_one": (False, True)}
    with pytest.raises(ModelDirectoryError) as err:
        dd.check_sampler(model_dir)
    assert one_sentence(str(err.value)) and str(root / "scheduler" / "scheduler_config.json") in str(err.value)
    assert "clip_sample False" in str(err.value)


def test_check_against_data(exported):
    model_dir = dd.read_model_dir(exported["unet"])
    dd.check_against_data(model_dir, (8, 8, 1))
    for shape, said in [((8, 8, 3), "takes images of 1 channel(s) (in_channels in its config.json) but the "
                                     "training data's have 3."),
                        ((32, 32, 1), "takes 8×8 images (sample_size in its config.json) but the training data's "
                                      "are 32×32.")]:
        with pytest.raises(ModelDirectoryError) as err:
            dd.check_against_data(model_dir, shape)
        assert str(err.value) == f"Model directory '{exported['unet']}' {said}"


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _pickle_only(root: Path) -> None:
    (root / dd.WEIGHTS_NAME).unlink()
    (root / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04never read")


def _disguised_pickle(root: Path) -> None:
    (root / dd.WEIGHTS_NAME).write_bytes(b"PK\x03\x04 a torch.save zip, never read")


def _sharded(root: Path) -> None:
    (root / dd.WEIGHTS_NAME).rename(root / "diffusion_pytorch_model-00001-of-00001.safetensors")


def _stable_diffusion(root: Path) -> None:
    (root / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
         "text_encoder": ["transformers", "CLIPTextModel"]}))


UNET_REFUSALS = {  # case: (edit of a copy of the UNet-layout export, what the sentence says after the path)
    "no config.json": (lambda r: (r / "config.json").unlink(),
                       "has no config.json (a UNet2DModel save_pretrained directory) and no model_index.json"),
    "pickle-only weights": (_pickle_only, "holds its weights only as 'diffusion_pytorch_model.bin', a pickle file"),
    "no safetensors": (lambda r: (r / dd.WEIGHTS_NAME).unlink(), "holds no *.safetensors weights."),
    "pickle named safetensors": (_disguised_pickle, "is a pickle file, which diffattr will not load"),
    "sharded weights": (_sharded, f"has no {dd.WEIGHTS_NAME} (it holds "),
    "no scheduler config": (lambda r: shutil.rmtree(r / "scheduler"), "has no scheduler config"),
    "conditional UNet": (lambda r: _edit_json(r / "config.json", _class_name="UNet2DConditionModel"),
                         "the text_to_image family reads it with model.family: text_to_image"),
    "another class": (lambda r: _edit_json(r / "config.json", _class_name="VQModel"),
                      "describes a VQModel, not a UNet2DModel"),
    "class-conditional": (lambda r: _edit_json(r / "config.json", num_class_embeds=10),
                          "describes a class-conditional UNet2DModel"),
    "learned variance": (lambda r: _edit_json(r / "config.json", out_channels=2),
                         "has out_channels 2 for in_channels 1"),
    "no sample_size": (lambda r: _edit_json(r / "config.json", sample_size=None), "does not state sample_size"),
    "v-prediction": (lambda r: _edit_json(r / "scheduler" / "scheduler_config.json", prediction_type="v_prediction"),
                     "has prediction_type 'v_prediction', which the ddpm family cannot express"),
    "given betas": (lambda r: _edit_json(r / "scheduler" / "scheduler_config.json", trained_betas=[0.1] * 1000),
                    "has trained_betas set to a list of 1000 values, which the ddpm family"),
    "zero terminal SNR": (lambda r: _edit_json(r / "scheduler" / "scheduler_config.json", rescale_betas_zero_snr=True),
                          "has rescale_betas_zero_snr True"),
    "sigmoid betas": (lambda r: _edit_json(r / "scheduler" / "scheduler_config.json", beta_schedule="sigmoid"),
                      "has beta_schedule 'sigmoid', which model.scheduler cannot express"),
    "bad JSON": (lambda r: (r / "config.json").write_text("{not json"), "is not a readable JSON file"),
}
PIPELINE_REFUSALS = {
    "pipeline without scheduler": (lambda r: shutil.rmtree(r / "scheduler"),
                                   "has no scheduler/scheduler_config.json."),
    "pipeline without unet": (lambda r: shutil.rmtree(r / "unet"), "has no unet/ subfolder."),
    "pickle-only pipeline unet": (lambda r: _pickle_only(r / "unet"), "a pickle file diffattr will not load"),
    "stable diffusion": (_stable_diffusion, "the text_to_image family reads it with model.family: text_to_image"),
    "another pipeline": (lambda r: _edit_json(r / "model_index.json", _class_name="ScoreSdeVePipeline"),
                         "holds a ScoreSdeVePipeline (model_index.json); this entry reads DDPMPipeline and "
                         "DDIMPipeline"),
}


@pytest.mark.parametrize(("layout", "case"),
                         [("unet", c) for c in UNET_REFUSALS] + [("pipeline", c) for c in PIPELINE_REFUSALS])
def test_refusals_are_one_sentence_naming_the_path_and_write_nothing(exported, layout, case, tmp_path):
    edit, said = {**UNET_REFUSALS, **PIPELINE_REFUSALS}[case]
    root = shutil.copytree(exported[layout], tmp_path / "model")
    edit(root)
    before = tree(tmp_path)
    with pytest.raises(ModelDirectoryError) as err:
        dd.read_model_dir(root)
    message = str(err.value)
    assert one_sentence(message), message
    assert said in message and str(root) in message, message
    assert tree(tmp_path) == before


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="^Model directory '.*nowhere' does not exist.$"):
        dd.read_model_dir(tmp_path / "nowhere")


def _unknown_argument(root: Path) -> None:
    _edit_json(root / "config.json", made_up_key=1)


def _missing_tensor(root: Path) -> None:
    tensors = load_file(root / dd.WEIGHTS_NAME)
    del tensors["conv_norm_out.weight"]
    save_file(tensors, root / dd.WEIGHTS_NAME)


def _misshapen(root: Path) -> None:
    _edit_json(root / "config.json", block_out_channels=[8, 32])


IMPORT_REFUSALS = {  # case: (edit that read_model_dir lets through, the sentence after "'{root}/")
    "unknown argument": (_unknown_argument,
                         "config.json' sets made_up_key, which the installed diffusers' UNet2DModel does not take."),
    "missing tensor": (_missing_tensor, f"{dd.WEIGHTS_NAME}' do not fit the UNet2DModel its config.json describes "
                                        f"(1 missing tensors)."),
    "misshapen tensor": (_misshapen, f"{dd.WEIGHTS_NAME}' do not fit the UNet2DModel its config.json describes "
                                     f"(down_blocks.1.resnets.0.conv1.bias expected shape torch.Size([32]), but got "
                                     f"torch.Size([16]))."),
}


@pytest.mark.parametrize("case", IMPORT_REFUSALS)
def test_import_refusals_leave_the_old_output(exported, case, tmp_path):
    edit, said = IMPORT_REFUSALS[case]
    out = tmp_path / "imported.safetensors"
    out.write_bytes(b"finished work")
    root = shutil.copytree(exported["unet"], tmp_path / "model")
    edit(root)
    with pytest.raises(ModelDirectoryError) as err:
        dd.import_unet(dd.read_model_dir(root), out)
    assert one_sentence(str(err.value)) and str(err.value).endswith(f"'{root}/{said}"), str(err.value)
    assert out.read_bytes() == b"finished work" and sorted(p.name for p in tmp_path.iterdir()) == [out.name, "model"]


def test_reading_is_torch_free():
    import subprocess
    import sys

    code = ("import sys; from diffattr.models.diffusers_dir import read_model_dir; "
            "print(any(m in sys.modules for m in ('torch', 'diffusers')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "False"
