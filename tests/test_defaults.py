"""Defaults in one place (issue 15, item 4), and no DAG read of a key the schema does not know.

A default of a non-method config key lives either in the schema (``default:``, filled in by
validation before the DAG reads the config) or in the settings dataclass that parses its block,
never in both; and every ``config[...]`` chain the DAG code reads (rules/*.smk, the Snakefile,
diffattr/config.py, diffattr/workflow/*.py, the method kinds' DAG hooks) names a key the schema defines. The rule files are
turned into Python by Snakemake's own parser and read with :mod:`ast`, so the checks see exactly
the expressions Snakemake runs. Method blocks (``methods.*``: their kinds' settings) are checked
where the method kinds are (tests/test_methods.py); here they are only resolved, not audited.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import yaml
from snakemake.parser import parse as parse_snakefile
from snakemake.sourcecache import LocalSourceFile

from diffattr.choose import SelectSettings
from diffattr.config import DEFAULT_CAPTION_TEMPLATE, DEFAULT_FEATURE_CHECKPOINT, validate
from diffattr.customization import CustomizationConfig
from diffattr.data.settings import DataConfig
from diffattr.featurize import FeatureSpec
from diffattr.ground_truth import GroundTruthConfig
from diffattr.models.text_to_image import TextToImageConfig
from diffattr.pretrain import PretrainConfig
from diffattr.projection import ProjectionConfig
from diffattr.sample import GenerateConfig
from diffattr.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
ANY = "*"
"""A path step that is not a constant (``config["features"][w.spec]``): any key of the block."""

SETTINGS = {
    ("data",): DataConfig,
    ("model", "text_to_image"): TextToImageConfig,
    ("model", "pretrain"): PretrainConfig,
    ("train",): TrainConfig,
    ("generate",): GenerateConfig,
    ("ground_truth",): GroundTruthConfig,
    ("features", ANY): FeatureSpec,
    ("features", ANY, "projection"): ProjectionConfig,
    ("customization",): CustomizationConfig,
    ("evaluation", "select"): SelectSettings,
}
"""Every settings dataclass that parses a non-method config block, by the block's schema path."""
NOT_FIELDS = {("generate",): {"model_seed"}}
"""Schema keys of a block that its dataclass does not take, and why: the DAG reads ``model_seed``
(which model generates) and gives the generate job the block without it."""
REQUIRED_BUT_DEFAULTED = {
    (("features", ANY), "output"), (("features", ANY), "timesteps"), (("features", ANY), "projection"),
    (("features", ANY, "projection"), "type"), (("features", ANY, "projection"), "dim"),
    (("features", ANY, "projection"), "seed"),
}
"""Dataclass defaults of keys the schema requires (so never used by the DAG), left because the
featurize and projection unit tests build partial specs; diffattr/featurize.py and
diffattr/projection.py are to drop them (their owners' change; no config reaches them)."""
LITERAL_DEFAULTS_PENDING: set[tuple[str, tuple[str, ...]]] = set()
"""DAG reads ``.get(key, literal)`` of keys the schema defaults (or requires), pending their
owner's one-line change to ``[key]``: the schema's default is filled in before the DAG reads them.
The test fails when one is fixed, so this list is kept exact."""


def resolve(node: dict) -> dict:
    """A schema node with its ``$ref`` (to ``#/$defs/...``) merged in."""
    while "$ref" in node:
        target = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def method_kinds() -> list[dict]:
    """The schema nodes of every method kind (``$defs/method_*``)."""
    return [resolve(node) for name, node in SCHEMA["$defs"].items() if name.startswith("method_")]


def children(node: dict, key: str) -> list[dict]:
    """The schema nodes a key (:data:`ANY`: any key) of an object node can be."""
    node = resolve(node)
    props, extra = node.get("properties", {}), node.get("additionalProperties")
    if key == ANY:
        found = [resolve(p) for p in props.values()]
        return found + ([resolve(extra)] if isinstance(extra, dict) else [])
    if key in props:
        return [resolve(props[key])]
    return [resolve(extra)] if isinstance(extra, dict) else []


def schema_nodes(path: tuple[str, ...]) -> list[dict]:
    """Every schema node a config path can name ([] when the schema does not define it). Below a
    method block (``methods.<name>``) the keys are those of any method kind."""
    nodes = [SCHEMA]
    for depth, key in enumerate(path):
        if path[:depth] == ("methods",) and depth == 1:
            nodes = method_kinds()
            continue
        nodes = [child for node in nodes for child in children(node, key)]
        if not nodes:
            return []
    return nodes


def node_at(path: tuple[str, ...]) -> dict:
    """The one schema node of a config path (a dataclass's block)."""
    (node,) = schema_nodes(path)
    return node


def schema_defaults(node: dict = SCHEMA, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    """Every ``default:`` of the schema outside ``$defs`` and ``methods``, by config path."""
    found = {}
    node = resolve(node)
    for key, child in node.get("properties", {}).items():
        child = resolve(child)
        if path + (key,) == ("methods",):
            continue
        if "default" in child:
            found[path + (key,)] = child["default"]
        found |= schema_defaults(child, path + (key,))
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        found |= schema_defaults(extra, path + (ANY,))
    return found


def field_defaults(cls: type) -> dict[str, object]:
    """A dataclass's fields that have a default (or a default factory), with it."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


# --- what the DAG reads -------------------------------------------------------------------------

DAG_FILES = [*sorted((REPO / "rules").glob("*.smk")), REPO / "Snakefile", REPO / "diffattr" / "config.py",
             *sorted((REPO / "diffattr" / "workflow").glob("*.py")), *sorted((REPO / "diffattr" / "methods").glob("*.py"))]
"""The code that reads the config while the DAG is built (the method kinds' modules: their DAG hooks,
e.g. gradient's ``derived_params`` reading ``plan.config["train"]``)."""


def python_of(path: Path) -> str:
    """A file's Python: a Snakemake file compiled by Snakemake's parser, a .py file as is."""
    if path.suffix == ".py":
        return path.read_text(encoding="utf-8")
    opener = SimpleNamespace(open=lambda source: open(source.get_path_or_uri(secret_free=True), encoding="utf-8"))
    code, _ = parse_snakefile(LocalSourceFile(str(path)), SimpleNamespace(sourcecache=opener), {})
    return code


def _step(node: ast.AST) -> str | None:
    """A subscript's or ``.get``'s key: the string, :data:`ANY` for an expression, None for an
    int or slice (the chain left the config's mappings)."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    return None if isinstance(node, ast.Slice) else ANY


def _root(node: ast.AST) -> str | None:
    """``config``, ``self.config``/``plan.x`` and other names a chain can start from, as text."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{'self' if node.value.id == 'plan' else node.value.id}.{node.attr}"
    return None


def chain(node: ast.AST) -> tuple[str | None, list[str], ast.Call | None]:
    """(root, keys, the ``.get`` call that reads the last key, if one does) of
    ``root[k1].get("k2")[k3]...``; ``(x or {})`` is read through. Keys stop at the first int or
    slice subscript."""
    keys, get = [], None
    while True:
        if isinstance(node, ast.Subscript):
            keys.append(_step(node.slice))
            node = node.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and node.args):
            get = node if not keys else get
            keys.append(_step(node.args[0]))
            node = node.func.value
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            node = node.values[0]
        else:
            break
    keys.reverse()
    if None in keys:
        keys = keys[: keys.index(None)]
    return _root(node), keys, get


ROOTS = {"config": (), "self.config": ()}


def _scopes(tree: ast.AST) -> list[list[ast.AST]]:
    """The statements of the module and of each function, without the functions nested in them."""
    def own(body_owner: ast.AST) -> list[ast.AST]:
        out, stack = [], list(ast.iter_child_nodes(body_owner))
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            out.append(node)
            stack.extend(ast.iter_child_nodes(node))
        return out

    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return [own(tree), *(own(f) for f in functions)]


def _aliases(nodes: list[ast.AST], known: dict[str, tuple]) -> dict[str, tuple]:
    """Names (and ``self.x``) assigned a config chain in these statements, to the chain's path."""
    found = dict(known)
    for _ in range(3):  # aliases of aliases
        for node in nodes:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                root, keys, _ = chain(node.value)
                if root in found and all(_root(t) for t in targets):
                    for t in targets:
                        found.setdefault(_root(t), (*found[root], *keys))
    return found


def config_reads(files: list[Path]) -> list[tuple[str, tuple[str, ...], ast.Call | None]]:
    """(file, config path, the ``.get`` call if the read is one) of every config chain in ``files``;
    module-level names and ``self.x`` attributes are shared by all files (the rule files share one
    namespace and call ``plan``'s attributes)."""
    trees = {f: ast.parse(python_of(f)) for f in files}
    shared = dict(ROOTS)
    for tree in trees.values():
        shared = _aliases(_scopes(tree)[0], shared)
        for scope in _scopes(tree)[1:]:
            shared |= {k: v for k, v in _aliases(scope, shared).items() if k.startswith("self.")}
    reads = []
    for path, tree in trees.items():
        for scope in _scopes(tree):
            names = _aliases(scope, shared)
            for node in scope:
                if isinstance(node, (ast.Subscript, ast.Call)):
                    root, keys, get = chain(node)
                    if root in names and keys:
                        reads.append((str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
                                      (*names[root], *keys), get))
    return reads


def unknown_reads(files: list[Path]) -> set[tuple[str, str]]:
    """(file, dotted path) of every config read in ``files`` that the schema does not define."""
    return {(f, ".".join(p)) for f, p, _ in config_reads(files) if not schema_nodes(p)}


# --- the tests ------------------------------------------------------------------------------------

def test_every_schema_default_is_valid_for_its_key():
    """A ``default:`` the key's own schema would refuse is a bug; every default must pass."""
    defaults = schema_defaults()
    assert ("subsets", "stratify") in defaults and ("resources", "gpus") in defaults
    for path, value in defaults.items():
        for node in schema_nodes(path):
            jsonschema.Draft202012Validator({**node, "$defs": SCHEMA["$defs"]}).validate(value)


@pytest.mark.parametrize("block", SETTINGS, ids=".".join)
def test_a_settings_dataclass_and_the_schema_name_the_same_keys(block):
    """The dataclass that parses a block takes exactly the schema's keys of that block."""
    keys = set(node_at(block)["properties"])
    fields = {f.name for f in dataclasses.fields(SETTINGS[block])}
    assert fields == keys - NOT_FIELDS.get(block, set())


@pytest.mark.parametrize("block", SETTINGS, ids=".".join)
def test_no_key_has_a_default_both_in_the_schema_and_in_its_dataclass(block):
    """One home per default: a schema ``default:`` of a dataclass-parsed key is refused, and so is a
    dataclass default of a key the schema requires (the DAG could never use it)."""
    node = node_at(block)
    defaults = field_defaults(SETTINGS[block])
    both = {k for k in defaults if "default" in resolve(node["properties"][k])}
    assert not both, f"{'.'.join(block)}: defaults in the schema and in {SETTINGS[block].__name__}: {sorted(both)}"
    required = {k for k in defaults if k in node.get("required", [])} - {k for b, k in REQUIRED_BUT_DEFAULTED if b == block}
    assert not required, f"{'.'.join(block)}: {SETTINGS[block].__name__} defaults required keys {sorted(required)}"


def test_the_schema_defaults_only_blocks_that_no_dataclass_parses():
    """The schema's defaults sit outside every dataclass-parsed block: they are what validation
    fills in for the DAG, so a block a dataclass parses gets its defaults from the dataclass alone
    (but for the keys the dataclass does not take, :data:`NOT_FIELDS`)."""
    inside = {p for p in schema_defaults() for block in SETTINGS
              if p[: len(block)] == block and p[len(block):] != () and p[len(block)] not in NOT_FIELDS.get(block, ())}
    assert not inside
    assert ("generate", "model_seed") in schema_defaults()


def test_dag_time_constants_agree_with_the_dataclass_defaults():
    """Two defaults still written twice (one for the torch-free DAG, one in a torch module) agree,
    until the torch modules import the DAG's constants (diffattr/featurize.py,
    diffattr/models/text_to_image.py)."""
    assert field_defaults(FeatureSpec)["checkpoint"] == DEFAULT_FEATURE_CHECKPOINT
    assert field_defaults(TextToImageConfig)["caption_template"] == DEFAULT_CAPTION_TEMPLATE


def test_validation_fills_the_schema_defaults_as_snakemake_does(tmp_path):
    """A config without the schema-defaulted keys gets them from Snakemake's validation, each equal
    to the schema's ``default:`` (what the DAG then reads without a second default)."""
    from snakemake.utils import validate as snakemake_validate

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    present = {}
    for path in schema_defaults():
        if ANY in path:
            continue
        *parent, key = path
        block = config
        for k in parent:
            block = block.get(k) or {}
        if key in block:
            present[path] = block.pop(key)
    assert present, "config.yaml sets none of the schema-defaulted keys"
    validate(config, SCHEMA)
    snakemake_validate(config, str(REPO / "schemas" / "config.schema.yaml"))
    for path in present:
        value = config
        for k in path:
            value = value[k]
        assert value == schema_defaults()[path], ".".join(path)


def test_every_config_key_the_dag_reads_is_in_the_schema():
    """Each ``config[...]``/``.get(...)`` chain of the DAG code names a key the schema defines."""
    reads = config_reads(DAG_FILES)
    paths = {p for _, p, _ in reads}
    # the collector does see the DAG's reads (else this test could not fail)
    for expected in [("train", "checkpoint_fractions"), ("generate", "model_seed"), ("evaluation", "lds", "pool"),
                     ("counterfactual", "bootstrap_resamples"), ("features", ANY, "shard_size"),
                     ("model", "text_to_image", "pipeline_path"), ("report", "samples"), ("train", "warmup_fraction")]:
        assert expected in paths, expected
    assert not unknown_reads(DAG_FILES)


def test_an_unknown_key_in_a_rule_is_found(tmp_path):
    """The check of the DAG's reads fails for a rule reading ``config["train"]["bogus"]``, through an
    alias, and through ``plan``'s attributes."""
    rule = tmp_path / "bogus.smk"
    rule.write_text('_T = config["train"]\n\nrule bogus:\n    params:\n        a=config["train"]["bogus"],\n'
                    '        b=lambda w: _T.get("also_bogus", 1),\n        c=plan.cf["nope"],\n'
                    '    shell:\n        "true"\n')
    files = [*DAG_FILES, rule]
    assert {(str(rule), "train.bogus"), (str(rule), "train.also_bogus"),
            (str(rule), "counterfactual.nope")} == unknown_reads(files)


def test_the_dag_gives_no_second_default_to_a_key_the_schema_defaults_or_requires():
    """``.get(key, literal)`` in the DAG code is a second default when the schema defaults the key
    (validation has filled it in) and a dead one when the schema requires it."""
    found = set()
    for file, path, get in config_reads(DAG_FILES):
        if get is None or len(get.args) < 2 or path[:1] == ("methods",) or path[-1] == ANY:
            continue
        if not isinstance(get.args[1], ast.Constant) or get.args[1].value is None:
            continue  # structural defaults ({} for an absent block) and named constants
        *parent, key = path
        nodes = schema_nodes(path)
        parents = schema_nodes(tuple(parent))
        if any("default" in n for n in nodes) or any(key in n.get("required", []) for n in parents):
            found.add((file, path))
    assert found == LITERAL_DEFAULTS_PENDING
