"""diffattr.workflow.layout: every artifact path written once, and the rule that writes each.

The rule files are read as text here (no Snakemake subprocess): each rule's log and benchmark come
from the layout under the rule's own name, and no path is built from OUT outside the layout."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from diffattr.workflow.layout import (
    ARTIFACTS,
    ATTRIBUTED_SETS,
    IMAGE_STORES,
    JOBS,
    NUMERIC_WILDCARDS,
    Layout,
    fill,
    producing_rule,
    wildcards,
)

RULE_FILES = sorted((REPO / "rules").glob("*.smk"))


def rule_blocks() -> dict[str, str]:
    """Rule name → its text in rules/*.smk (from its ``rule``/``use rule ... as`` line to the next)."""
    head = re.compile(r"^\s*(?:rule (\w+):|use rule \w+ as (\w+) with:)", re.MULTILINE)
    blocks = {}
    for path in RULE_FILES:
        text = path.read_text()
        starts = list(head.finditer(text))
        for m, nxt in zip(starts, [*starts[1:], None]):
            blocks[m[1] or m[2]] = text[m.start(): nxt.start() if nxt else len(text)]
    return blocks


def example(template: str) -> str:
    """A concrete path of ``template`` under ``results/``: numeric wildcards 3, others 'x'."""
    return "results/" + fill(template, **{w: 3 if w in NUMERIC_WILDCARDS else "x" for w in wildcards(template)})


def test_names_templates_and_job_files_are_unique():
    names = [a.name for a in ARTIFACTS]
    templates = [a.template for a in ARTIFACTS]
    assert len(set(names)) == len(names) == len(ARTIFACTS)
    assert len(set(templates)) == len(templates)
    layout = Layout("out")
    files = [layout.log(r) for r in JOBS] + [layout.benchmark(r) for r in JOBS]
    assert len(set(files)) == 2 * len(JOBS)
    assert not set(files) & {layout.path(t) for t in templates}


def test_layout_joins_output_dir_and_template():
    layout = Layout("/abs/out")
    assert layout.features == "/abs/out/features/{spec}/{pool}/{subset}/seed{seed}/{split}.zarr"
    assert layout.checkpoint.format(pool="lds", subset=4, seed=0, step=120) == (
        "/abs/out/models/lds/4/seed0/step120.safetensors")
    assert layout.log("featurize") == (
        "/abs/out/logs/featurize/{spec}/{pool}/{subset}/seed{seed}/{split}/shard{shard}.log")
    assert layout.benchmark("score") == "/abs/out/benchmarks/score/{method}/{set}.tsv"
    assert layout.log("lds_table") == "/abs/out/logs/lds_table.log"  # one job: no folder
    assert layout.image_store("journey") == "/abs/out/data/trajectory.zarr"
    assert {layout.image_store(s) for s in ATTRIBUTED_SETS} == {layout.data, layout.generated, layout.query_images}
    with pytest.raises(AttributeError, match="no artifact 'nope'"):
        layout.nope  # noqa: B018
    with pytest.raises(KeyError):
        layout.log("no_such_rule")


def test_fill_replaces_only_the_named_wildcards():
    assert fill("s{sample}_k{k}/{set}", k=5) == "s{sample}_k5/{set}"
    assert fill("a/{x}", x=1) == "a/{x}".format(x=1)
    assert fill("{a}", b=2) == "{a}"


@pytest.mark.parametrize("artifact", [a for a in ARTIFACTS if a.rule], ids=lambda a: a.name)
def test_every_written_artifact_maps_back_to_its_rule(artifact):
    assert producing_rule(example(artifact.template)) == artifact.rule
    assert producing_rule("/" + example(artifact.template)) == artifact.rule


@pytest.mark.parametrize("path, rule", [
    ("results/features/loss/full/0/seed0/train/shard3.zarr", "featurize"),
    ("/abs/out/features/loss/lds/2/seed1/val.zarr", "gather_features"),
    ("results/kernels/loss/full/0/seed0/gram/shard1.zarr", "gram_partial"),
    ("results/scores/journey_trak/trajectory.zarr", "score_trajectory"),
    ("results/scores/trak/gen.zarr/", "score"),
    ("results/ground_truth/select/part1/7/seed0.zarr", "measure_outputs"),
    ("results/ground_truth/select/part1", "measure_outputs"),
    ("results/ground_truth/select_reliability.csv", "gather_ground_truth"),
    ("results/models/lds/4/seed0/step120.safetensors", "train_model"),
    ("results/models/base/pretrain_log.csv", "pretrain_base"),
    ("results/counterfactual/models/trak/s3_k10_log.csv", "counterfactual_train"),
    ("results/lambda_oracle/trak/lds/0/seed0.csv", "oracle_lambda"),
    ("results/report/attributions/trak/val_2.png", "attribution_grids"),
    ("results/benchmarks/methods.csv", "plot_runtime"),
    ("elsewhere/thing.zarr", None),
    ("results/models/lds/four/seed0/step120.safetensors", None),  # subset is an integer
    ("results/report.html", None),  # snakemake --report, not a rule
    ("results/xscores/trak/gen.zarr", None),  # a template starts at a path segment
])
def test_concrete_paths_map_to_their_rule(path, rule):
    assert producing_rule(path) == rule


def test_every_rule_of_the_workflow_has_a_job_key_and_every_artifact_a_real_rule():
    blocks = rule_blocks()
    assert len(blocks) > 30, sorted(blocks)  # the parser found the rules
    assert set(JOBS) == set(blocks) - {"all"}
    assert {a.rule for a in ARTIFACTS if a.rule} <= set(blocks)


def test_each_rule_logs_and_benchmarks_through_the_layout_under_its_own_name():
    for rule, text in rule_blocks().items():
        if rule == "all":
            continue
        log = re.search(r"\n\s+log:\n\s+(.+)\n", text)
        assert log and log[1].strip() == f'L.log("{rule}"),', (rule, log and log[1])
        bench = re.search(r"\n\s+benchmark:\n\s+(.+)\n", text)
        if bench:
            assert bench[1].strip() == f'L.benchmark("{rule}")', rule
    assert "L = plan.layout" in (REPO / "rules" / "common.smk").read_text()


def test_no_path_is_built_from_the_output_dir_outside_the_layout():
    path_string = re.compile(r"""f?["'][^"'\n]*(?:\{OUT\}|/logs/|/benchmarks/|\.zarr|\.csv|\.safetensors|\.png|\.tsv)[^"'\n]*["']""")
    found = [(p.name, m[0]) for p in [*RULE_FILES, REPO / "Snakefile"] for m in path_string.finditer(p.read_text())]
    assert found == []


def test_image_stores_name_artifacts():
    layout = Layout("o")
    assert {getattr(layout, name) for name in IMAGE_STORES.values()} == {
        "o/data/dataset.zarr", "o/data/generated.zarr", "o/data/trajectory.zarr", "o/data/queries.zarr"}


def test_show_and_cli_take_their_paths_from_the_layout(tmp_path):
    from diffattr.cli import report_file
    from diffattr.show import ShowError, show_attribution

    assert report_file({"output_dir": "res"}, tmp_path) == Path(Layout(str(tmp_path / "res")).report_html)
    assert report_file({"output_dir": "res"}, tmp_path) == tmp_path / "res" / "report.html"
    with pytest.raises(ShowError) as caught:
        show_attribution(tmp_path, "trak", "gen", 0)
    assert str(caught.value).startswith(f"No score store at {tmp_path / 'scores' / 'trak' / 'gen.zarr'}:")


def test_layout_imports_neither_torch_nor_snakemake():
    code = ("import json, sys\nimport diffattr.workflow.layout\n"
            "print(json.dumps(sorted(m for m in ('torch', 'snakemake', 'zarr', 'numpy') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
