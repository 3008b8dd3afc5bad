"""The gate every diffusers / transformers directory passes before ``from_pretrained`` sees it.

A ``.bin`` / ``.ckpt`` / ``.pt`` / ``.pth`` / ``.pkl`` weight file is a pickle: unpickling it can run
any code it names. diffattr loads weights from safetensors only — ``from_pretrained(...,
use_safetensors=True, local_files_only=True)``, which never falls back to a pickle file — and before
that call :func:`check_weights_dir` refuses, in one sentence naming the file, a directory whose weights
exist only as pickle files, so the user learns what to convert instead of reading a loader's traceback.
A single-file checkpoint (a DDPM's weights, a LoRA adapter) is refused by :func:`check_weights_file`
when its name or first bytes say pickle, before the safetensors reader opens it.

Why a gate and not just the flag: with the flag but no gate, a pickle-only directory fails deep in
diffusers with "Error no file named diffusion_pytorch_model.safetensors found"; without the flag
diffusers 0.42 / transformers 5 fall back to ``torch.load(weights_only=True)``, torch's restricted
unpickler — safer than plain pickle, but still a pickle parser, and one that has had bypasses
(CVE-2025-32434, torch < 2.6). With the gate no pickle parser is ever entered.
Nothing here imports torch: the checks list files (and read 4 bytes), cheap enough for DAG time.
"""

from __future__ import annotations

from pathlib import Path

PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
"""File endings of pickle-serialised weights (torch.save, diffusers/transformers ``safe_serialization=False``)."""
PIPELINE_SUBFOLDERS: tuple[str, ...] = ("unet", "text_encoder", "tokenizer", "vae")
"""The subfolders of a Stable-Diffusion pipeline directory that diffattr reads."""
WEIGHT_SUBFOLDERS: tuple[str, ...] = ("unet", "text_encoder", "vae")
"""Those of them that hold weights (the tokenizer holds JSON and text files)."""
CONVERT_HINT = ("load it once in an environment you trust and save it again with "
                "save_pretrained(..., safe_serialization=True)")


class ModelDirectoryError(ValueError):
    """A model directory diffattr will not load, stated in one sentence that names the directory or file."""


class MissingModelError(ModelDirectoryError, FileNotFoundError):
    """A model directory, subfolder or ``config.json`` that is not there (also a ``FileNotFoundError``)."""


def pickle_files(directory: Path) -> list[str]:
    """Names of the pickle weight files directly in ``directory`` (suffix in :data:`PICKLE_SUFFIXES`), sorted."""
    return sorted(p.name for p in directory.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)


def check_weights_dir(directory: str | Path) -> Path:
    """``directory`` if it is a ``save_pretrained`` directory with safetensors weights, else a
    :class:`ModelDirectoryError`: no directory, no ``config.json``, weights only as pickle files, or
    no weights at all. A directory holding both safetensors and pickle files passes (only the
    safetensors are read: the loaders pass ``use_safetensors=True``)."""
    root = Path(directory)
    if not root.is_dir():
        raise MissingModelError(f"Model directory '{root}' does not exist.")
    if not (root / "config.json").is_file():
        raise MissingModelError(f"Model directory '{root}' has no config.json, so it is not a directory "
                                f"written by save_pretrained.")
    if any(root.glob("*.safetensors")):
        return root
    pickled = pickle_files(root)
    if pickled:
        names = ", ".join(f"'{n}'" for n in pickled)
        what = "a pickle file" if len(pickled) == 1 else "pickle files"
        raise ModelDirectoryError(
            f"Model directory '{root}' holds its weights only as {names}, {what} diffattr will not load; "
            f"convert {'it' if len(pickled) == 1 else 'them'} to safetensors ({CONVERT_HINT})."
        )
    raise ModelDirectoryError(f"Model directory '{root}' holds no *.safetensors weights.")


def check_tokenizer_dir(directory: str | Path) -> Path:
    """``directory`` if it holds a ``tokenizer_config.json`` and no pickle file, else a
    :class:`ModelDirectoryError` (a tokenizer has no weights; a pickle file there is never read)."""
    root = Path(directory)
    if not (root / "tokenizer_config.json").is_file():
        raise MissingModelError(f"Tokenizer directory '{root}' has no tokenizer_config.json, so it is not a "
                                f"directory written by save_pretrained.")
    pickled = pickle_files(root)
    if pickled:
        raise ModelDirectoryError(f"Tokenizer directory '{root}' holds '{pickled[0]}', a pickle file diffattr "
                                  f"will not load; remove it (a tokenizer is read from its JSON and text files).")
    return root


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """Whether a file's first 9 bytes ``head`` (of ``size`` bytes in all) open a safetensors file: a
    little-endian u64 header length n with 8 + n ≤ size, then the JSON header's ``{``."""
    return len(head) >= 9 and 8 + int.from_bytes(head[:8], "little") <= size and head[8:9] == b"{"


def is_pickle_file(path: Path) -> bool:
    """Whether ``path`` is pickle-serialised: a pickle suffix, or — unless it opens like safetensors
    (:func:`looks_like_safetensors`; a safetensors header length may well start with byte 0x80) — the
    first bytes of a pickle (protocol ≥ 2 opens with 0x80) or of ``torch.save``'s zip (``PK\\x03\\x04``)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with path.open("rb") as f:
        head = f.read(9)
    if looks_like_safetensors(head, path.stat().st_size):
        return False
    return head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"


def check_weights_file(path: str | Path) -> Path:
    """``path`` if it is a file that is not a pickle (:func:`is_pickle_file`), else one sentence naming
    it (:class:`ModelDirectoryError`; a :class:`MissingModelError` when absent). Whether it parses as
    safetensors is left to the safetensors reader, which executes nothing."""
    file = Path(path)
    if not file.is_file():
        raise MissingModelError(f"Checkpoint '{file}' does not exist.")
    if is_pickle_file(file):
        raise ModelDirectoryError(f"Checkpoint '{file}' is a pickle file, which diffattr will not load; convert it "
                                  f"to safetensors (safetensors.torch.save_file of its state dict, done once in an "
                                  f"environment you trust).")
    return file


def check_pipeline_dir(path: str | Path) -> Path:
    """``path`` if it is a pipeline directory whose unet/, text_encoder/ and vae/ pass
    :func:`check_weights_dir` and whose tokenizer/ passes :func:`check_tokenizer_dir`; else one sentence
    naming the subfolder or file. Reads no weights, imports no torch (so it can run at DAG time)."""
    root = Path(path)
    absent = [sub for sub in PIPELINE_SUBFOLDERS if not (root / sub).is_dir()]
    if absent:
        raise MissingModelError(f"Pipeline directory '{root}' lacks the subfolders {absent} "
                                f"(of {list(PIPELINE_SUBFOLDERS)}).")
    for sub in WEIGHT_SUBFOLDERS:
        check_weights_dir(root / sub)
    check_tokenizer_dir(root / "tokenizer")
    return root
