"""A user's diffusers DDPM directory in, our checkpoint out — and back (issue 16, "Model in").

Two layouts are read, both written by diffusers' own ``save_pretrained``:

- a UNet directory: ``config.json`` (``_class_name`` ``UNet2DModel``) and
  ``diffusion_pytorch_model.safetensors``, with the scheduler's config as
  ``scheduler/scheduler_config.json`` or ``scheduler_config.json`` beside them;
- a ``DDPMPipeline`` / ``DDIMPipeline`` directory: ``model_index.json``, ``unet/`` and ``scheduler/``.

:func:`read_model_dir` turns either into a :class:`ModelDir`: the UNet's ``__init__`` arguments as
its ``config.json`` holds them (every key but diffusers' private ``_``-keys, so
:func:`diffattr.models.ddpm.build_unet` rebuilds exactly that architecture, including settings
config.yaml's ``model.unet`` never sets, such as ``flip_sin_to_cos`` or ``time_embedding_type``), and
the scheduler in ``model.scheduler``'s form: :data:`NOISE_KEYS`, which fix ᾱ_t, the only part of the
scheduler that training, featurization and scoring read. A scheduler the ddpm family cannot express —
another prediction target, hand-given betas, a zero-terminal-SNR rescale, a β schedule outside the
schema's enum — is refused in one sentence, as is anything else that is not a DDPM UNet with
safetensors weights. The remaining keys steer sampling only; they are kept in
``ModelDir.sampler_settings``, and :func:`check_sampler` refuses those diffattr's DDIM sampler would
not honour, for a run that generates images with the model.

Reading is torch-free (json and file listings: DAG time); :func:`import_unet` and :func:`export_unet`
import torch and diffusers. Weights are read with ``use_safetensors=True, local_files_only=True``
after :mod:`diffattr.models.weights`' gate, and written as safetensors only, atomically.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffattr.models.weights import (
    MissingModelError,
    ModelDirectoryError,
    check_weights_dir,
    check_weights_file,
)

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
"""The file ``UNet2DModel.save_pretrained`` writes and ``from_pretrained(use_safetensors=True)`` reads."""
PIPELINE_CLASSES = ("DDPMPipeline", "DDIMPipeline")
"""``model_index.json`` ``_class_name`` values this entry reads."""
TEXT_TO_IMAGE_MARKS = ("UNet2DConditionModel", "StableDiffusion", "text_encoder")
"""A class name containing one of these, or a ``text_encoder`` component, marks a text-to-image model."""
NOISE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end")
"""The scheduler keys of config.yaml's ``model.scheduler`` (schemas/config.schema.yaml)."""
REQUIRED_NOISE_KEYS = ("num_train_timesteps", "beta_schedule")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
"""``model.scheduler.beta_schedule``'s enum in schemas/config.schema.yaml."""
FIXED_SETTINGS: dict[str, Any] = {"prediction_type": "epsilon", "trained_betas": None, "rescale_betas_zero_snr": False}
"""Scheduler settings the ddpm family fixes (ε-prediction, ᾱ_t from the β schedule): another value is refused."""
SAMPLER_DEFAULTS: dict[str, Any] = {
    "clip_sample": True, "clip_sample_range": 1.0, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0, "timestep_spacing": "leading", "steps_offset": 0, "set_alpha_to_one": True,
}
"""What diffattr's sampler (``DDIMScheduler.from_config(build_scheduler(...).config)``, diffattr.sample)
uses for each sampling setting; tests/test_diffusers_dir.py checks this table against diffusers."""
UNET_REQUIRED = ("sample_size", "in_channels", "out_channels", "block_out_channels", "down_block_types",
                 "up_block_types")
"""``UNet2DModel`` arguments a config.json must state (``model.unet``'s required keys that have no
meaning without a value here); ``layers_per_block`` and the rest fall back to diffusers' defaults."""


@dataclass(frozen=True)
class ModelDir:
    """A checked diffusers DDPM directory: where its parts are and its configs in our form.

    ``unet_config`` is ``model.unet``'s form (every ``UNet2DModel`` argument config.json holds);
    ``scheduler_config`` is ``model.scheduler``'s (:data:`NOISE_KEYS` present in the file);
    ``sampler_settings`` the scheduler's other public keys as the file gives them; ``sample_size`` the
    model's (H, W); ``layout`` ``"unet"`` or ``"pipeline"``."""

    path: Path
    layout: str
    unet_dir: Path
    weights: Path
    scheduler_file: Path
    unet_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    sampler_settings: dict[str, Any]
    sample_size: tuple[int, int]
    in_channels: int


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or one sentence naming it."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelDirectoryError(f"'{path}' is not a readable JSON file ({err}).") from None
    if not isinstance(value, dict):
        raise ModelDirectoryError(f"'{path}' does not hold a JSON object.")
    return value


def _is_text_to_image(names: list[str]) -> bool:
    return any(mark in name for name in names for mark in TEXT_TO_IMAGE_MARKS)


def _text_to_image_refusal(path: Path, what: str) -> ModelDirectoryError:
    return ModelDirectoryError(f"Model directory '{path}' holds {what}, a text-to-image model; the text_to_image "
                               f"family reads it with model.family: text_to_image and its LoRA in attribute.lora "
                               f"(diffattr.models.pipeline_dir).")


def locate(path: str | Path) -> tuple[str, Path, Path]:
    """``(layout, unet_dir, scheduler_file)`` of the directory ``path``, or one sentence naming what is
    missing: the directory, both ``config.json`` and ``model_index.json``, a pipeline's ``unet/``, or
    the scheduler config. Lists files only."""
    root = Path(path)
    if not root.is_dir():
        raise MissingModelError(f"Model directory '{root}' does not exist.")
    if (root / "model_index.json").is_file():
        index = _read_json(root / "model_index.json")
        name = str(index.get("_class_name"))
        if _is_text_to_image([name, *index]):
            raise _text_to_image_refusal(root, f"a {name}")
        if name not in PIPELINE_CLASSES:
            raise ModelDirectoryError(f"Model directory '{root}' holds a {name} (model_index.json); this entry reads "
                                      f"{' and '.join(PIPELINE_CLASSES)} directories.")
        unet_dir, scheduler_file = root / "unet", root / "scheduler" / "scheduler_config.json"
        if not unet_dir.is_dir():
            raise MissingModelError(f"Pipeline directory '{root}' has no unet/ subfolder.")
        if not scheduler_file.is_file():
            raise MissingModelError(f"Pipeline directory '{root}' has no scheduler/scheduler_config.json.")
        return "pipeline", unet_dir, scheduler_file
    if not (root / "config.json").is_file():
        raise MissingModelError(f"Model directory '{root}' has no config.json (a UNet2DModel save_pretrained "
                                f"directory) and no model_index.json (a DDPMPipeline or DDIMPipeline directory).")
    for candidate in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if candidate.is_file():
            return "unet", root, candidate
    raise MissingModelError(f"Model directory '{root}' has no scheduler config (scheduler/scheduler_config.json or "
                            f"scheduler_config.json), so its noise schedule is unknown.")


def unet_weights(unet_dir: Path) -> Path:
    """The UNet's safetensors weights in ``unet_dir`` (:data:`WEIGHTS_NAME`), after
    :func:`~diffattr.models.weights.check_weights_dir` (config.json present, not pickle-only, some
    safetensors) and :func:`~diffattr.models.weights.check_weights_file` (not a pickle in disguise)."""
    check_weights_dir(unet_dir)
    weights = unet_dir / WEIGHTS_NAME
    if not weights.is_file():
        found = ", ".join(f"'{p.name}'" for p in sorted(unet_dir.glob("*.safetensors")))
        raise ModelDirectoryError(f"Model directory '{unet_dir}' has no {WEIGHTS_NAME} (it holds {found}); save the "
                                  f"UNet again with save_pretrained, without a variant or shards.")
    return check_weights_file(weights)


def unet_config_of(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """``model.unet``'s form of a UNet ``config.json`` (read from ``path``): every key but diffusers'
    private ``_``-keys, refused in one sentence unless it is an unconditional ε-predicting
    ``UNet2DModel`` that states :data:`UNET_REQUIRED`."""
    name = config.get("_class_name")
    if name == "UNet2DConditionModel" or _is_text_to_image([str(name)]):
        raise _text_to_image_refusal(path.parent, f"a {name} ({path.name})")
    if name != "UNet2DModel":
        raise ModelDirectoryError(f"'{path}' describes a {name}, not a UNet2DModel, which the ddpm family needs.")
    unet = {k: v for k, v in config.items() if not k.startswith("_")}
    missing = [k for k in UNET_REQUIRED if unet.get(k) is None]
    if missing:
        raise ModelDirectoryError(f"'{path}' does not state {', '.join(missing)}, which diffattr needs to check the "
                                  f"model against the data.")
    if unet.get("class_embed_type") is not None or unet.get("num_class_embeds") is not None:
        raise ModelDirectoryError(f"'{path}' describes a class-conditional UNet2DModel (class_embed_type "
                                  f"{unet.get('class_embed_type')}, num_class_embeds {unet.get('num_class_embeds')}), "
                                  f"which the ddpm family, unconditional, does not support.")
    if unet["out_channels"] != unet["in_channels"]:
        raise ModelDirectoryError(f"'{path}' has out_channels {unet['out_channels']} for in_channels "
                                  f"{unet['in_channels']}; the ddpm family predicts ε, as many channels as it takes.")
    return unet


def _said(value: Any) -> str:
    """A value as a refusal quotes it: a list by its length (a β table has a thousand entries)."""
    return f"set to a list of {len(value)} values" if isinstance(value, list) else repr(value)


def scheduler_configs_of(config: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model.scheduler form, sampler settings)`` of a scheduler config (read from ``path``):
    :data:`NOISE_KEYS` go to the first, the other public keys but :data:`FIXED_SETTINGS` to the second.
    Refused in one sentence: a missing :data:`REQUIRED_NOISE_KEYS` key, a β schedule outside
    :data:`BETA_SCHEDULES`, or a :data:`FIXED_SETTINGS` key with another value."""
    missing = [k for k in REQUIRED_NOISE_KEYS if k not in config]
    if missing:
        raise ModelDirectoryError(f"Scheduler config '{path}' does not state {', '.join(missing)}.")
    if config["beta_schedule"] not in BETA_SCHEDULES:
        raise ModelDirectoryError(f"Scheduler config '{path}' has beta_schedule {config['beta_schedule']!r}, which "
                                  f"model.scheduler cannot express (one of {', '.join(BETA_SCHEDULES)}).")
    for key, ours in FIXED_SETTINGS.items():
        if key in config and config[key] != ours:
            raise ModelDirectoryError(f"Scheduler config '{path}' has {key} {_said(config[key])}, which the ddpm "
                                      f"family cannot express (it trains and attributes with {key} {ours!r}).")
    noise = {k: config[k] for k in NOISE_KEYS if k in config}
    sampler = {k: v for k, v in config.items()
               if not k.startswith("_") and k not in NOISE_KEYS and k not in FIXED_SETTINGS}
    return noise, sampler


def sample_size_of(unet_config: dict[str, Any]) -> tuple[int, int]:
    """The model's (H, W): ``sample_size`` as one int (square) or a pair."""
    size = unet_config["sample_size"]
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def read_model_dir(path: str | Path) -> ModelDir:
    """The checked :class:`ModelDir` of a UNet2DModel ``save_pretrained`` directory (with its
    scheduler config) or a DDPMPipeline / DDIMPipeline directory; every refusal is one
    :class:`~diffattr.models.weights.ModelDirectoryError` sentence naming the path (module docstring).
    Torch-free: reads two JSON files and the first bytes of the weights."""
    layout, unet_dir, scheduler_file = locate(path)
    weights = unet_weights(unet_dir)
    unet = unet_config_of(_read_json(unet_dir / "config.json"), unet_dir / "config.json")
    noise, sampler = scheduler_configs_of(_read_json(scheduler_file), scheduler_file)
    return ModelDir(path=Path(path), layout=layout, unet_dir=unet_dir, weights=weights, scheduler_file=scheduler_file,
                    unet_config=unet, scheduler_config=noise, sampler_settings=sampler,
                    sample_size=sample_size_of(unet), in_channels=int(unet["in_channels"]))


def check_against_data(model_dir: Any, shape: tuple[int, int, int], what: str = "Model directory",
                       channels_from: str = "in_channels in its config.json",
                       size_from: str = "sample_size in its config.json") -> None:
    """Refuse, in one sentence naming the directory (``what``) and where its figure comes from, a model
    whose resolution or channel count is not the data's (H, W, C) (:func:`diffattr.data.sizes.image_shape`);
    ``model_dir`` has ``path``, ``in_channels`` and ``sample_size`` (a :class:`ModelDir`, or a
    text-to-image :class:`~diffattr.models.pipeline_dir.PipelineDir`)."""
    h, w, c = shape
    if model_dir.in_channels != c:
        raise ModelDirectoryError(f"{what} '{model_dir.path}' takes images of {model_dir.in_channels} "
                                  f"channel(s) ({channels_from}) but the training data's have {c}.")
    if model_dir.sample_size != (h, w):
        mh, mw = model_dir.sample_size
        raise ModelDirectoryError(f"{what} '{model_dir.path}' takes {mh}×{mw} images ({size_from}) but the "
                                  f"training data's are {h}×{w}.")


def sampler_differences(model_dir: ModelDir) -> dict[str, tuple[Any, Any]]:
    """``{key: (model's value, diffattr sampler's value)}`` for each sampling setting of the model's
    scheduler that diffattr's sampler reads (:data:`SAMPLER_DEFAULTS`) and sets otherwise."""
    return {k: (v, SAMPLER_DEFAULTS[k]) for k, v in model_dir.sampler_settings.items()
            if k in SAMPLER_DEFAULTS and v != SAMPLER_DEFAULTS[k]}


def check_sampler(model_dir: ModelDir) -> None:
    """Refuse in one sentence, for a run that generates images with the model, a scheduler whose
    sampling settings diffattr's sampler would not honour (:func:`sampler_differences`)."""
    differences = sampler_differences(model_dir)
    if differences:
        said = ", ".join(f"{k} {v!r} (diffattr samples with {ours!r})" for k, (v, ours) in sorted(differences.items()))
        raise ModelDirectoryError(f"Scheduler config '{model_dir.scheduler_file}' sets {said}, which diffattr's "
                                  f"sampler cannot express; attribute given images instead of generated ones.")


def check_unet_arguments(model_dir: ModelDir) -> None:
    """Refuse in one sentence a config.json key that is not a ``UNet2DModel`` argument of the installed
    diffusers (``from_pretrained`` would drop it and build another model than the one saved). Imports diffusers."""
    import inspect

    from diffattr.models.diffusers_classes import UNet2DModel

    known = set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"}
    unknown = sorted(set(model_dir.unet_config) - known)
    if unknown:
        raise ModelDirectoryError(f"'{model_dir.unet_dir / 'config.json'}' sets {', '.join(unknown)}, which the "
                                  f"installed diffusers' UNet2DModel does not take.")


def import_unet(model_dir: ModelDir, out_path: str | Path) -> None:
    """Write the directory's UNet as our checkpoint (:func:`diffattr.models.ddpm.save_weights`, atomic) at
    ``out_path``, so that ``load_unet(out_path, model_dir.unet_config)`` is the same model; loaded with
    ``from_pretrained(..., use_safetensors=True, local_files_only=True)``; a file with missing, extra
    or misshapen tensors (which ``from_pretrained`` would fill at random or drop) is refused and nothing
    is written."""
    from diffattr.models.ddpm import build_unet, save_weights
    from diffattr.models.diffusers_classes import UNet2DModel

    check_unet_arguments(model_dir)
    try:
        loaded, info = UNet2DModel.from_pretrained(model_dir.unet_dir, use_safetensors=True, local_files_only=True,
                                                   output_loading_info=True)
    except ValueError as err:  # diffusers refuses a misshapen tensor in several sentences: keep the first clause
        found = re.search(r"because (.+?)\. ", str(err))
        reason = found.group(1) if found else str(err).splitlines()[0].rstrip(".")
        raise ModelDirectoryError(f"The weights in '{model_dir.weights}' do not fit the UNet2DModel its config.json "
                                  f"describes ({reason}).") from None
    unfit = {k: len(info[k]) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info[k]}
    if unfit:
        said = ", ".join(f"{n} {k.replace('_keys', '')}" for k, n in unfit.items())
        raise ModelDirectoryError(f"The weights in '{model_dir.weights}' do not fit the UNet2DModel its config.json "
                                  f"describes ({said} tensors).")
    rebuilt = build_unet(model_dir.unet_config)
    rebuilt.load_state_dict(loaded.state_dict(), strict=True)  # the same architecture: every tensor, no other
    save_weights(rebuilt, out_path, {"unet": model_dir.unet_config, "scheduler": model_dir.scheduler_config,
                                     "imported_from": str(model_dir.path)})


def export_unet(checkpoint: str | Path, unet_config: dict[str, Any], scheduler_config: dict[str, Any],
                out_dir: str | Path, pipeline: bool = False) -> None:
    """Write our checkpoint as a diffusers directory at ``out_dir`` (atomically, safetensors only): a
    UNet2DModel ``save_pretrained`` directory with ``scheduler/scheduler_config.json``, or with
    ``pipeline`` a DDPMPipeline directory (``model_index.json``, ``unet/``, ``scheduler/``). The
    inverse of :func:`read_model_dir` + :func:`import_unet`."""
    from diffattr.atomic import atomic_path
    from diffattr.models.ddpm import build_scheduler, load_unet

    unet = load_unet(checkpoint, unet_config)
    scheduler = build_scheduler(scheduler_config)
    with atomic_path(out_dir) as tmp:
        if pipeline:
            from diffusers import DDPMPipeline  # the pipeline module needs all of diffusers (transformers too)

            DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
        else:
            unet.save_pretrained(tmp, safe_serialization=True)
            scheduler.save_pretrained(tmp / "scheduler")
