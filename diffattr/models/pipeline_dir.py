"""A user's Stable-Diffusion pipeline directory and LoRA weights in (issue 16, "Model in", text-to-image).

Read: a pipeline directory as ``StableDiffusionPipeline.save_pretrained`` writes it (``unet/``,
``text_encoder/``, ``tokenizer/``, ``vae/``, ``scheduler/``; ``model_index.json`` optional) and a LoRA
file as diffusers' ``save_lora_weights`` writes it (``pytorch_lora_weights.safetensors``, keys
``unet.<module>.lora_A.weight`` / ``lora_B.weight``, or the older ``lora.down`` / ``lora.up`` names).
The run's model is then the pipeline (``model.text_to_image.pipeline_path``) with a peft adapter of
the file's rank, alpha and target modules on its UNet (``model.text_to_image.lora``), and the
``import_model`` job copies the file's tensors into that adapter (:func:`import_lora`). Gradients,
Fishers and features cover the LoRA weights only, as for the benchmark's text-to-image family
(:mod:`diffattr.models.family`).

What is derived, torch-free (from JSON configs and the safetensors headers, at DAG time):

- resolution: the UNet's latent ``sample_size`` × 2^(len(vae ``block_out_channels``) − 1), the VAE's
  downsampling; channels: the VAE's ``in_channels``; both checked against the data;
- the noise schedule: ``scheduler/scheduler_config.json`` in ``model.scheduler``'s form
  (:func:`diffattr.models.diffusers_dir.scheduler_configs_of`: ε-prediction only);
- the adapter: rank r (every ``lora_A`` is r × d_in), alpha (``unet.lora_alpha`` of the file's
  ``lora_adapter_metadata`` when saved, else r, which is what diffusers assumes without it), and
  target modules (the module-name suffixes when they select exactly the file's modules among the
  UNet's, else the full names).

Refused in one sentence naming the file: a missing part, pickle weights (:mod:`diffattr.models.weights`),
no LoRA (a fully fine-tuned UNet is not supported yet: its gradients would span every UNet weight),
a LoRA on the text encoder, per-module ranks or alphas, or keys that are not the diffusers/peft format.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffattr.models.diffusers_dir import _read_json, check_against_data, scheduler_configs_of
from diffattr.models.weights import ModelDirectoryError, MissingModelError, check_pipeline_dir, check_weights_file

LORA_NAME = "pytorch_lora_weights.safetensors"
"""The file ``save_lora_weights`` writes in its directory."""
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
OLD_NAMES = {".lora.down.weight": ".lora_A.weight", ".lora.up.weight": ".lora_B.weight"}
"""diffusers' older LoRA key endings and the peft ones they stand for."""
ADAPTER = "default"
"""The adapter name peft gives the one adapter :func:`diffattr.models.text_to_image.add_lora` attaches."""


@dataclass(frozen=True)
class PipelineDir:
    """A checked SD pipeline directory and LoRA file: where they are, the adapter's settings
    (``lora``: rank, alpha, target_modules), the file key of each adapter parameter (``keys``: our
    parameter name → the file's key), the scheduler in ``model.scheduler``'s form and the pixel
    size the pipeline takes."""

    path: Path
    lora_file: Path
    lora: dict[str, Any]
    keys: dict[str, str]
    scheduler_config: dict[str, Any]
    sampler_settings: dict[str, Any]
    scheduler_file: Path
    sample_size: tuple[int, int]
    in_channels: int


def is_pipeline_dir(path: str | Path) -> bool:
    """Whether ``path`` looks like a text-to-image pipeline (a ``text_encoder/`` subfolder, or a
    ``model_index.json`` naming one)."""
    root = Path(path)
    if (root / "text_encoder").is_dir():
        return True
    index = root / "model_index.json"
    return index.is_file() and "text_encoder" in _read_json(index)


def safetensors_header(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``({tensor key: {"dtype", "shape", "data_offsets"}}, metadata)`` of a safetensors file, read
    from its header (8-byte little-endian length, then JSON): no tensor data, no torch."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                raise ValueError(f"a header of {length} bytes")
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as error:
        raise ModelDirectoryError(f"'{path}' is not a readable safetensors file ({error}).") from None
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata


def lora_file_of(path: str | Path) -> Path:
    """The LoRA file at ``path`` (a file, or a directory holding :data:`LORA_NAME`), checked not to
    be a pickle."""
    given = Path(path)
    file = given / LORA_NAME if given.is_dir() else given
    if not file.is_file():
        where = f"'{given}' has no {LORA_NAME}" if given.is_dir() else f"'{given}' does not exist"
        raise MissingModelError(f"LoRA weights {where}.")
    return check_weights_file(file)


def _module_of(key: str, file: Path) -> tuple[str, str]:
    """``(module name, "A" or "B")`` of one LoRA key of the file, or one sentence."""
    if key.startswith("text_encoder"):
        raise ModelDirectoryError(f"LoRA file '{file}' adapts the text encoder ({key}); only a LoRA on the UNet is "
                                  f"supported.")
    if not key.startswith("unet."):
        raise ModelDirectoryError(f"LoRA file '{file}' holds '{key}', not a key of the diffusers/peft format "
                                  f"(unet.<module>.lora_A.weight); save the adapter with save_lora_weights.")
    name = key.removeprefix("unet.")
    for old, new in OLD_NAMES.items():
        if name.endswith(old):
            name = name.removesuffix(old) + new
    for end, part in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
        if name.endswith(end):
            return name.removesuffix(end), part
    raise ModelDirectoryError(f"LoRA file '{file}' holds '{key}', which is not a lora_A / lora_B weight (per-module "
                              f"alphas and biases are not supported).")


def _targets(modules: set[str], unet_modules: set[str]) -> list[str]:
    """peft ``target_modules`` selecting exactly ``modules`` among ``unet_modules``: the names'
    suffixes (``to_q``, ``to_out.0``) when they select no other module, else the full names."""
    suffixes = {".".join(m.split(".")[-2:]) if m.split(".")[-1].isdigit() else m.split(".")[-1] for m in modules}
    chosen = {m for m in unet_modules if any(m == s or m.endswith("." + s) for s in suffixes)}
    return sorted(suffixes) if chosen == modules else sorted(modules)


def read_lora(file: Path, unet_dir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """``(lora settings, {our parameter name: file key})`` of a LoRA file for the UNet in ``unet_dir``."""
    header, metadata = safetensors_header(file)
    if not header:
        raise ModelDirectoryError(f"LoRA file '{file}' holds no tensors.")
    parts: dict[str, dict[str, str]] = {}
    for key in header:
        module, part = _module_of(key, file)
        parts.setdefault(module, {})[part] = key
    unpaired = sorted(m for m, p in parts.items() if set(p) != {"A", "B"})
    if unpaired:
        raise ModelDirectoryError(f"LoRA file '{file}' has module '{unpaired[0]}' without both lora_A and lora_B.")
    ranks = {header[p["A"]]["shape"][0] for p in parts.values()}
    if len(ranks) != 1:
        raise ModelDirectoryError(f"LoRA file '{file}' has ranks {sorted(ranks)}; one rank for every module is supported.")
    rank = ranks.pop()
    unet_header, _ = safetensors_header(unet_dir / UNET_WEIGHTS)
    unet_modules = {k.rsplit(".", 1)[0] for k in unet_header}
    missing = sorted(set(parts) - unet_modules)
    if missing:
        raise ModelDirectoryError(f"LoRA file '{file}' adapts '{missing[0]}', which is not a module of the UNet in "
                                  f"'{unet_dir}'.")
    adapter = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    for pattern in ("rank_pattern", "alpha_pattern"):
        if adapter.get(f"unet.{pattern}"):
            raise ModelDirectoryError(f"LoRA file '{file}' sets a {pattern} (per-module settings); one rank and "
                                      f"alpha for every module is supported.")
    alpha = adapter.get("unet.lora_alpha", rank)
    keys = {f"{m}.lora_{p}.{ADAPTER}.weight": key for m, pk in parts.items() for p, key in pk.items()}
    return {"rank": int(rank), "alpha": alpha, "target_modules": _targets(set(parts), unet_modules)}, dict(sorted(keys.items()))


def read_pipeline_dir(path: str | Path, lora: str | Path | None) -> PipelineDir:
    """The checked :class:`PipelineDir` of an SD pipeline directory and its LoRA (module docstring)."""
    root = check_pipeline_dir(path)
    if lora is None:
        raise ModelDirectoryError(f"Pipeline directory '{root}' is a text-to-image model but 'attribute.lora' names no "
                                  f"LoRA weights; diffattr attributes a LoRA fine-tune (a fully fine-tuned UNet is not "
                                  f"supported yet).")
    unet = _read_json(root / "unet" / "config.json")
    vae = _read_json(root / "vae" / "config.json")
    if unet.get("_class_name") != "UNet2DConditionModel":
        raise ModelDirectoryError(f"'{root / 'unet' / 'config.json'}' describes a {unet.get('_class_name')}, not the "
                                  f"UNet2DConditionModel of a Stable-Diffusion pipeline.")
    scheduler_file = root / "scheduler" / "scheduler_config.json"
    if not scheduler_file.is_file():
        raise MissingModelError(f"Pipeline directory '{root}' has no scheduler/scheduler_config.json.")
    noise, sampler = scheduler_configs_of(_read_json(scheduler_file), scheduler_file)
    size = unet.get("sample_size")
    latent = (size, size) if isinstance(size, int) else tuple(size)
    factor = 2 ** (len(vae.get("block_out_channels", [64])) - 1)
    lora_file = lora_file_of(lora)
    settings, keys = read_lora(lora_file, root / "unet")
    return PipelineDir(path=root, lora_file=lora_file, lora=settings, keys=keys, scheduler_config=noise,
                       sampler_settings=sampler, scheduler_file=scheduler_file,
                       sample_size=(int(latent[0]) * factor, int(latent[1]) * factor),
                       in_channels=int(vae.get("in_channels", 3)))


def check_pipeline_against_data(pipeline: PipelineDir, shape: tuple[int, int, int]) -> None:
    """Refuse, in one sentence naming the pipeline, one whose pixel size or VAE channels are not the
    data's (H, W, C) (:func:`diffattr.models.diffusers_dir.check_against_data`)."""
    check_against_data(pipeline, shape, "Pipeline directory", "in_channels in vae/config.json",
                       "unet/config.json's sample_size times the VAE's downsampling")


def import_lora(pipeline: PipelineDir, params: dict[str, Any], out_path: str | Path) -> None:
    """Write the LoRA file's tensors as our checkpoint (:func:`diffattr.models.family.save_model`,
    atomic) at ``out_path``: the run's model (the pipeline with the adapter ``params`` describes,
    :func:`diffattr.models.family.fresh_model`) with every adapter weight copied from the file; a
    tensor of another shape is refused and nothing is written."""
    import torch
    from safetensors import safe_open

    from diffattr.models.family import fresh_model, save_model
    from diffattr.models.text_to_image import lora_parameters

    model = fresh_model(params, 0)
    adapter = lora_parameters(model.network.unet)
    if set(adapter) != set(pipeline.keys):
        raise ModelDirectoryError(f"LoRA file '{pipeline.lora_file}' does not match the adapter its keys describe "
                                  f"({len(set(adapter) ^ set(pipeline.keys))} tensors differ).")
    with safe_open(str(pipeline.lora_file), framework="pt", device="cpu") as f, torch.no_grad():
        for name, param in adapter.items():
            tensor = f.get_tensor(pipeline.keys[name])
            if tensor.shape != param.shape:
                raise ModelDirectoryError(f"LoRA file '{pipeline.lora_file}' has {pipeline.keys[name]} of shape "
                                          f"{tuple(tensor.shape)}, not the adapter's {tuple(param.shape)}.")
            param.copy_(tensor.to(param.dtype))
    save_model(model, str(out_path), {"imported_from": str(pipeline.path), "lora": str(pipeline.lora_file)})
