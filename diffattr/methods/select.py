"""Selection (``kind: select``, docs/methods.md §2.20): one of several methods, the one the select
pool prefers, chosen per attributed set by the rule of ``evaluation.select`` (§4.6) and never by the
lds pool, so its lds-pool LDS is an honest figure for "the method this system recommends".

Candidate c's select-pool predictions are P_c = A·(s_c·τ_c)ᵀ (§4.4: the LDS's own predictions, with
its sign s_c), A the select pool's masks (M × N); the rule (``best``: argmax of the select-pool LDS;
``one_se``: the first listed candidate within one paired-bootstrap SE of the best) picks c*, and the
method's scores are τ_{c*} exactly, with c*'s sign, served by row blocks. A sweep marked
``select: true`` adds one over its values (:func:`diffattr.sweeps.expand_sweeps`), the swept method's
own value listed first (the preferred one under one_se).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffattr.methods.registry import ScoreBlocks, ScoreContext, method_settings


@dataclass(frozen=True)
class SelectMethodSettings:
    """``methods``: the candidate methods, simplest first (evaluated ones, no select among them);
    ``select_rule``: what the DAG derives from ``evaluation.select`` (:func:`derived_params`)."""

    methods: list[str]
    select_rule: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.methods) < 2:
            raise ValueError(f"a select method chooses among at least 2 methods; it names {len(self.methods)}")


def derived_params(plan: Any, name: str) -> dict[str, Any]:
    """The DAG's addition to a select method's params: the rule of ``evaluation.select``, so that
    changing the rule re-runs the selections (and what depends on them) only."""
    return {"select_rule": plan.select_rule}


def select_scores(ctx: ScoreContext) -> ScoreBlocks:
    """Choose a candidate on the select pool (masks and truth of ``ctx.inputs``) and serve its scores."""
    from diffattr.choose import SelectSettings, choose
    from diffattr.evaluate.lds import predicted_outputs
    from diffattr.methods.stack import select_pool
    from diffattr.scores import iter_score_blocks, read_score_rows, score_attrs, score_shape

    settings = SelectMethodSettings(**method_settings(SelectMethodSettings, ctx.settings, "select"))
    rule = SelectSettings(**settings.select_rule)
    paths = list(ctx.inputs.components)
    n_queries, n_train, masks, truth = select_pool(ctx, [score_shape(p) for p in paths],
                                                   f"candidate methods {settings.methods}")
    signs = [int(score_attrs(p)["sign"]) for p in paths]
    preds = [predicted_outputs(masks, iter_score_blocks(p, 256), n_queries, s) for p, s in zip(paths, signs)]
    choice = choose(preds, truth, rule)
    chosen, path = settings.methods[choice.index], paths[choice.index]
    inner = score_attrs(path).get("chosen", "")
    label = f"{chosen}{f' ({inner})' if inner else ''}, chosen on select ({rule.rule})"

    def block(start: int, stop: int):
        return read_score_rows(path, start, stop)

    return ScoreBlocks(n_queries, n_train, block,
                       {"chosen": label, "sign": signs[choice.index], "selected": chosen,
                        "candidates": list(settings.methods), "select_lds": _json_floats(choice.lds),
                        "select_se": _json_floats(choice.se)})


def _json_floats(values) -> list[float | None]:
    """Floats for the store's JSON attrs, NaN as null."""
    return [None if v != v else float(v) for v in values]
