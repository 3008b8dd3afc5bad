"""Plans of configs without Snakemake: config.yaml with layers merged over it, resolved as
rules/common.smk resolves them (:meth:`diffattr.workflow.plan.Plan.of`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from diffattr.cli import merge_configs
from diffattr.config import load_yaml, read_config_file
from diffattr.workflow.plan import Plan

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_yaml(REPO / "schemas" / "config.schema.yaml")


def config_of(*layers: str | Path | dict[str, Any]) -> dict[str, Any]:
    """config.yaml with ``layers`` (files relative to the repository, or dicts) merged over it."""
    parts = [read_config_file(REPO / "config.yaml")]
    parts += [copy.deepcopy(layer) if isinstance(layer, dict) else read_config_file(REPO / layer) for layer in layers]
    return merge_configs(*parts)


def plan_of(*layers: str | Path | dict[str, Any]) -> Plan:
    """The plan of config.yaml with ``layers`` merged over it, in order."""
    return Plan.of(config_of(*layers), copy.deepcopy(SCHEMA), REPO)


def fake_artbench(tmp_path: Path) -> tuple[Path, Path]:
    """A fake ArtBench image folder of empty files (as many as config/artbench2.yaml's n_train and
    n_attributed need) and a pipeline directory of empty files named as save_pretrained names them:
    enough for the config checks and a dry-run, which read neither."""
    art = tmp_path / "artbench"
    for split, count in (("train", 2500), ("test", 500)):
        for style in ("post_impressionism", "ukiyo_e", "baroque"):
            (art / split / style).mkdir(parents=True)
            for i in range(count):
                (art / split / style / f"{i}.png").touch()
    pipeline = tmp_path / "miniSD"
    for sub, weights in (("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
                         ("text_encoder", "model.safetensors"), ("tokenizer", "tokenizer_config.json")):
        (pipeline / sub).mkdir(parents=True)
        (pipeline / sub / weights).touch()
        if sub != "tokenizer":
            (pipeline / sub / "config.json").write_text("{}")
    return art, pipeline
