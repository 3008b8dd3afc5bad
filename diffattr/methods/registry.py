"""The method interface (DESIGN.md "One method interface").

A method is a name in the config's ``methods`` block whose ``kind`` names a :class:`MethodKind`
here: a built-in one (:data:`BUILTIN`) or one a plugin module added with :func:`register` (the
config's ``plugins`` list names such modules). A kind declares its LDS sign (docs/methods.md §0, §4.4),
its typed needs (:data:`NEEDS`, which :class:`diffattr.workflow.plan.Plan` turns into input files),
its settings dataclass, the model families it supports, its extra DAG stages and its scorer: a
function imported only when the job runs (so this module is torch-free) that maps a
:class:`ScoreContext` (typed :class:`MethodInputs`, the method's settings, the model config, the
ground truth's draws) to :class:`ScoreBlocks`, an (attributed × train) matrix one row block at a time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import numpy as np

HELPS = -1
"""Sign of scores where larger means "z helps x" (lowers its loss): TRAK family, similarity, TracIn."""
LOSS_UNITS = +1
"""Sign of scores expressed as a change in loss: empirical influence, datamodels."""


MODEL_KEYS = ("family", "unet", "scheduler", "text_to_image", "base")
"""The keys of the model config (:func:`diffattr.config.model_params`) a score job's params may hold."""

Need = str
"""What a kind's scorer reads, by name; :meth:`diffattr.workflow.plan.Plan.method_inputs` turns each
into files: ``data`` (the training images; also the queries of "val"), ``generated`` (the "gen"
queries), ``full_model`` (the full model's final checkpoint and, for text-to-image, its base),
``kernel_models`` (each model's kernel, train and query features, chosen-λ curve, DAS residuals),
``feature_models`` (train and query features of each checkpoint spec), ``retrain_truth`` (the
retrain pool's masks and ground truth), ``encoded_models`` (the encoded pool's masks and members),
``ground_truth`` (no file: the ground truth's (seed, t) draws as a param), ``component_scores`` (the
score stores of the methods a stack combines, on the same set), ``select_truth`` (the select pool's
masks and ground truth, which a stack fits its weights on)."""
NEEDS: tuple[Need, ...] = ("data", "generated", "full_model", "kernel_models", "feature_models",
                           "retrain_truth", "encoded_models", "ground_truth", "component_scores", "select_truth")
FAMILIES = frozenset({"ddpm", "text_to_image"})
STAGES = ("lambda", "residuals", "retraining_curve")
"""Extra DAG stages a kind may declare: ``lambda`` (select_lambda per model and the oracle
diagnostic), ``residuals`` (DAS's residual weights, when the method sets ``residual``),
``retraining_curve`` (LDS vs number of retrained models)."""


@dataclass(frozen=True)
class MethodKind:
    """One method kind, declared once: its name, the LDS sign of its scores (§0, §4.4), what it
    needs, its scorer (``module:function`` taking a :class:`ScoreContext`, imported only in the job),
    its settings dataclass (``module:Class``; None: the schema's block alone), the model families it
    supports, its extra DAG stages, and the params the DAG derives for it
    (``module:function(plan, name) -> dict``, torch-free)."""

    kind: str
    sign: int
    needs: tuple[Need, ...]
    scorer: str
    description: str
    settings: str | None = None
    families: frozenset[str] = FAMILIES
    stages: tuple[str, ...] = ()
    derive: str | None = None

    def __post_init__(self):
        for what, values, known in (("needs", self.needs, NEEDS), ("stages", self.stages, STAGES),
                                    ("families", self.families, FAMILIES)):
            if unknown := sorted(set(values) - set(known)):
                raise ValueError(f"method kind {self.kind!r} declares unknown {what} {unknown}; known: {sorted(known)}")
        if self.sign not in (HELPS, LOSS_UNITS):
            raise ValueError(f"method kind {self.kind!r} has sign {self.sign}; use registry.HELPS or LOSS_UNITS")


@dataclass(frozen=True)
class MethodInputs:
    """The files a score job reads, by the names :meth:`Plan.method_inputs` gives them (tuples: one
    entry per model or checkpoint spec, in the method's order)."""

    data: str | None = None
    generated: str | None = None
    query_images: str | None = None
    checkpoint: str | None = None
    base: str | None = None
    masks: str | None = None
    truth: str | None = None
    kernels: tuple[str, ...] = ()
    train: tuple[str, ...] = ()
    queries: tuple[str, ...] = ()
    lambdas: tuple[str, ...] = ()
    residuals: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    components: tuple[str, ...] = ()

    @classmethod
    def of(cls, files: Mapping[str, Any]) -> MethodInputs:
        """From a mapping of names to a path or a list of paths (Snakemake's ``input``)."""
        known = {f.name: f for f in fields(cls)}
        if unknown := sorted(set(files) - set(known)):
            raise ValueError(f"unknown method input names {unknown}; known: {sorted(known)}")
        return cls(**{name: tuple(map(str, value)) if known[name].default == () else str(value)
                      for name, value in files.items()})

    def images(self, query_set: str) -> str:
        """The image store holding an attributed set's queries ("gen": the generated samples,
        "query": an attribute run's images, "val": the data store)."""
        store = {"gen": self.generated, "query": self.query_images}.get(query_set, self.data)
        if store is None:
            raise ValueError(f"no image store for the {query_set!r} queries among the method's inputs")
        return store


@dataclass(frozen=True)
class ScoreContext:
    """What a scorer receives: its inputs, the method's own settings (its config block without
    ``kind``, plus what the DAG derived for it), the model config (empty for a kind that runs no
    model), the ground truth's draws (for kinds that need them) and the attributed set."""

    inputs: MethodInputs
    settings: dict[str, Any]
    model: dict[str, Any]
    ground_truth: dict[str, Any] | None
    query_set: str

    @classmethod
    def from_params(cls, params: dict[str, Any], files: Mapping[str, Any] | MethodInputs,
                    query_set: str) -> ScoreContext:
        """Split a score job's ``method`` param (the block with the model config and ground truth
        merged in by :meth:`Plan.method_params`, so a finished run's params stay as they were) back
        apart: the one place that does."""
        inputs = files if isinstance(files, MethodInputs) else MethodInputs.of(files)
        model = {k: params[k] for k in MODEL_KEYS if k in params}
        settings = {k: v for k, v in params.items() if k not in {*MODEL_KEYS, "ground_truth", "kind"}}
        return cls(inputs, settings, model, params.get("ground_truth"), query_set)


@dataclass
class ScoreBlocks:
    """A score matrix (n_queries × n_train) computed by row blocks; ``attrs`` are recorded with it."""

    n_queries: int
    n_train: int
    block: Callable[[int, int], np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_matrix(cls, scores: np.ndarray, attrs: dict[str, Any] | None = None) -> ScoreBlocks:
        """A score matrix already in memory (methods that score all queries at once), served by row slices."""
        return cls(scores.shape[0], scores.shape[1], lambda start, stop: scores[start:stop], dict(attrs or {}))


KINDS: dict[str, MethodKind] = {}
"""Every method kind by name: the built-in ones (:data:`BUILTIN`) and any :func:`register` added."""


def register(kind: MethodKind) -> MethodKind:
    """Add a method kind (a plugin module calls this when imported; the config's ``plugins`` list
    names such modules, imported at DAG time and in each score job). Another kind of the same name
    is refused."""
    if kind.kind in KINDS and KINDS[kind.kind] != kind:
        raise ValueError(f"a method kind named {kind.kind!r} is already registered")
    KINDS[kind.kind] = kind
    return kind


def load_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import the modules that register method kinds (config key ``plugins``)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"Config key 'plugins' names module {module!r}, which does not import: {error}.") from None


def resolve(ref: str) -> Any:
    """The object a ``module:name`` reference names (importing its module)."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def settings_class(kind: MethodKind) -> type | None:
    """A kind's settings dataclass (imports its module: may import torch)."""
    return resolve(kind.settings) if kind.settings else None


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", tuple: "array",
               dict: "object"}


def settings_schema(kind: MethodKind) -> dict[str, Any]:
    """A closed JSON-schema block for a kind's config block, from its settings dataclass: one
    property per field (typed from its annotation when it is a plain type: int also accepts nothing
    else, float accepts integers), required = the fields without a default, plus ``kind``."""
    import typing

    cls = settings_class(kind)
    if cls is None:
        raise ValueError(f"method kind {kind.kind!r} declares no settings dataclass, so its config block has no schema")
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {"kind": {"const": kind.kind}}
    required = ["kind"]
    for f in fields(cls):
        hint = typing.get_origin(hints[f.name]) or hints[f.name]
        json_type = _JSON_TYPES.get(hint)
        properties[f.name] = ({"type": ["number"] if json_type == "number" else [json_type]} if json_type else {})
        if f.default is MISSING and f.default_factory is MISSING:
            required.append(f.name)
    return {"type": "object", "additionalProperties": False, "required": required, "properties": properties}


def method_settings(settings: type, block: dict[str, Any], what: str) -> dict[str, Any]:
    """A method's config block as keyword arguments of its settings dataclass ``settings``:
    ``kind`` dropped, a key that is not a field refused in one sentence naming ``what``."""
    known = {f.name for f in fields(settings)}
    cfg = {k: v for k, v in block.items() if k != "kind"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown {what} settings {unknown}; known: {sorted(known)}")
    return cfg


def method_kind(method_config: dict[str, Any]) -> MethodKind:
    try:
        return KINDS[method_config["kind"]]
    except KeyError:
        raise ValueError(f"unknown method kind {method_config.get('kind')!r}; known kinds: {sorted(KINDS)}") from None


def load_scorer(kind: MethodKind) -> Callable[[ScoreContext], ScoreBlocks]:
    return resolve(kind.scorer)


def score_method(method_config: dict[str, Any], inputs: Mapping[str, Any] | MethodInputs, query_set: str,
                 out_path: str, block_rows: int = 256) -> ScoreBlocks:
    """score: run a method's scorer for one attributed set and write its scores by row blocks."""
    from diffattr.scores import write_scores

    kind = method_kind(method_config)
    blocks = load_scorer(kind)(ScoreContext.from_params(method_config, inputs, query_set))
    attrs = {"method": method_config, "kind": kind.kind, "sign": kind.sign, "set": query_set, **blocks.attrs}
    write_scores(out_path, blocks.n_queries, blocks.n_train, blocks.block, block_rows, attrs)
    return blocks


_IMAGES = ("data", "generated")
_FULL = (*_IMAGES, "full_model")
BUILTIN: tuple[MethodKind, ...] = (
    MethodKind("pixel", HELPS, _IMAGES, "diffattr.methods.similarity:pixel_scores",
               "Raw-pixel similarity: dot, cosine or negative squared L2 (docs/methods.md §2.1)",
               settings="diffattr.methods.similarity:PixelSettings"),
    MethodKind("random", HELPS, _IMAGES, "diffattr.methods.similarity:random_scores",
               "Seeded −U(0,1) control scores, LDS ≈ 0 (docs/methods.md §2.2)",
               settings="diffattr.methods.similarity:RandomSettings"),
    MethodKind("trak", HELPS, ("kernel_models",), "diffattr.methods.trak:trak_scores",
               "TRAK / D-TRAK (feature spec's output: loss / square), single model or ensemble (§2.10, §2.11); "
               "RelatIF, renormalised IF (normalize) and DAS (residual) (§2.6, §2.7, §2.13)",
               stages=("lambda", "residuals"),
               settings="diffattr.methods.trak:TrakSettings"),
    MethodKind("gradient", HELPS, ("feature_models",), "diffattr.methods.gradient:gradient_scores",
               "Grad-dot / Grad-cos on one checkpoint, TracIn / GAS summed over checkpoints (§2.3, §2.4, §2.7)",
               derive="diffattr.methods.gradient:derived_params",
               settings="diffattr.methods.gradient:GradientSettings"),
    MethodKind("retraining", LOSS_UNITS, ("retrain_truth",), "diffattr.methods.retraining:retraining_scores",
               "Empirical influence or datamodels from the retrain pool's models (§2.14, §2.15)",
               stages=("retraining_curve",),
               settings="diffattr.methods.retraining:RetrainingSettings"),
    MethodKind("influence", HELPS, _FULL, "diffattr.methods.influence:influence_method_scores",
               "Influence functions, exact / conjugate gradient / LiSSA Hessian-vector products (§2.8)",
               settings="diffattr.methods.influence:InfluenceConfig", families=frozenset({"ddpm"})),
    MethodKind("ekfac", HELPS, _FULL, "diffattr.methods.ekfac:ekfac_method_scores",
               "K-FAC / EK-FAC influence on the full model, kronfluence as the engine (§2.9)",
               settings="diffattr.methods.ekfac:EkfacConfig", families=frozenset({"ddpm"})),
    MethodKind("encoded", LOSS_UNITS, (*_IMAGES, "encoded_models", "ground_truth"),
               "diffattr.methods.encoded:encoded_method_scores",
               "Encoded ensemble (Dai & Gifford): full ensemble's L_Simple minus the complementary half's (§2.18)",
               families=frozenset({"ddpm"}),
               settings="diffattr.methods.encoded:EncodedSettings"),
    MethodKind("unlearning", HELPS, (*_FULL, "ground_truth"), "diffattr.methods.unlearning:unlearning_method_scores",
               "Attribution by unlearning: Fisher-preconditioned ascent on x̂, score = loss change of z (§2.17)",
               settings="diffattr.methods.unlearning:UnlearningConfig"),
    MethodKind("embedding", HELPS, _FULL, "diffattr.methods.embedding:embedding_method_scores",
               "Embedding similarity: a local CLIP vision model or the trained DDPM's UNet as encoder (§2.2)",
               settings="diffattr.methods.embedding:EmbeddingConfig", families=frozenset({"ddpm"})),
    MethodKind("stack", HELPS, ("component_scores", "select_truth"), "diffattr.methods.stack:stack_scores",
               "Stacking: non-negative weights of other methods' standardised scores, fit on the select pool (§2.19)",
               settings="diffattr.methods.stack:StackSettings"),
    MethodKind("select", HELPS, ("component_scores", "select_truth"), "diffattr.methods.select:select_scores",
               "Selection: the candidate method the select pool prefers under evaluation.select's rule, its scores as they are (§2.20)",
               settings="diffattr.methods.select:SelectMethodSettings", derive="diffattr.methods.select:derived_params"),
)
"""The built-in kinds; a plugin module adds its own with :func:`register`."""
for _kind in BUILTIN:
    register(_kind)
