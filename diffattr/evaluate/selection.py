"""How well the select pool chooses (issue 18, item 1; docs/methods.md §4.6), measured from candidates'
subset predictions: a kernel method's λ grid (:func:`diffattr.methods.trak.lambda_predictions`) or a
select method's candidate methods.

- :func:`pool_rows`: each rule's choice on the select pool against the lds pool's own argmax (the
  "oracle", a diagnostic), both read on the lds pool: ``gap`` = L_lds(oracle) − L_lds(chosen) ≥ 0 is
  what choosing honestly costs, ``agree`` says the two are the same candidate.
- :func:`resplit_rows`: the same at other select-pool sizes. The select and lds subsets are drawn
  alike (independent α-subsets, §4.2), so their union is re-split at random into m subsets that
  choose and the rest that evaluate; ``splits`` such draws per size m.
- :func:`stack_resplit_rows`: the same re-splits for a stack (§2.19): its nnls weights fit on the m
  subsets, judged on the rest, next to equal weights, the one component the m subsets prefer and the
  best component on the judging subsets themselves — whether a larger select pool would raise it.

Pure functions over arrays (each candidate's predictions M × n, the truth M × n).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from diffattr.choose import SelectSettings, choose, lds_of

COLUMNS = ["case", "set", "size", "split", "rule", "chosen", "oracle", "lds_chosen", "lds_oracle", "gap", "agree"]


def judged(preds: Sequence[np.ndarray], truth: np.ndarray, eval_preds: Sequence[np.ndarray], eval_truth: np.ndarray,
           rules: dict[str, SelectSettings], order: Sequence[int]) -> list[dict]:
    """Per rule: the candidate chosen on (preds, truth), the argmax on the evaluation subsets, both
    candidates' evaluation LDS and the gap."""
    on_eval = lds_of(eval_preds, eval_truth)
    oracle = int(np.nanargmax(on_eval))
    rows = []
    for rule, settings in rules.items():
        chosen = choose(preds, truth, settings, order).index
        rows.append({"rule": rule, "chosen": chosen, "oracle": oracle, "lds_chosen": float(on_eval[chosen]),
                     "lds_oracle": float(on_eval[oracle]), "gap": float(on_eval[oracle] - on_eval[chosen]),
                     "agree": chosen == oracle})
    return rows


def resplits(n: int, sizes: Sequence[int], splits: int, seed: int = 0) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(m, split, fit, rest) for ``splits`` random permutations of n subsets per size m (one generator
    for all sizes, in order): the first m fit or choose, the other n − m judge."""
    rng = np.random.default_rng(seed)
    for m in sizes:
        if not 2 <= m <= n - 2:
            raise ValueError(f"a fit size of {m} leaves no 2 subsets of {n} to judge on")
        for split in range(splits):
            perm = rng.permutation(n)
            yield m, split, perm[:m], perm[m:]


def pool_rows(select: Sequence[np.ndarray], select_truth: np.ndarray, lds: Sequence[np.ndarray], lds_truth: np.ndarray,
              rules: dict[str, SelectSettings], order: Sequence[int]) -> list[dict]:
    """The run's own pools: chosen on the select pool, judged on the lds pool."""
    return [{"size": len(select_truth), "split": -1, **r} for r in judged(select, select_truth, lds, lds_truth, rules, order)]


def resplit_rows(select: Sequence[np.ndarray], select_truth: np.ndarray, lds: Sequence[np.ndarray], lds_truth: np.ndarray,
                 rules: dict[str, SelectSettings], order: Sequence[int], sizes: Sequence[int], splits: int,
                 seed: int = 0) -> list[dict]:
    """Both pools' subsets pooled and re-split ``splits`` times per size m: m choose, the rest judge."""
    preds = [np.vstack([s, v]) for s, v in zip(select, lds)]
    truth = np.vstack([select_truth, lds_truth])
    return [{"size": m, "split": split, **r} for m, split, pick, rest in resplits(len(truth), sizes, splits, seed)
            for r in judged([p[pick] for p in preds], truth[pick], [p[rest] for p in preds], truth[rest], rules, order)]


def stack_resplit_rows(preds: Sequence[np.ndarray], truth: np.ndarray, sizes: Sequence[int], splits: int,
                       seed: int = 0) -> list[dict]:
    """Per size m and split (the subsets of ``truth`` drawn at random, m fit, the rest judge), from the
    stack's standardised component predictions (:mod:`diffattr.methods.stack`): the judging LDS of
    ``nnls`` (Σ w_c·P_c, w fit on the m), ``equal`` (Σ P_c / C), ``best single`` (the component with
    the best LDS on the m) and ``oracle single`` (the best component on the judging subsets)."""
    from diffattr.methods.stack import fit_weights

    rows = []
    for m, split, fit, rest in resplits(len(truth), sizes, splits, seed):
        w = fit_weights([p[fit] for p in preds], truth[fit], "nnls")
        single = lds_of([p[rest] for p in preds], truth[rest])
        rows.append({"size": m, "split": split,
                     "nnls": float(lds_of([sum(wc * p[rest] for wc, p in zip(w, preds))], truth[rest])[0]),
                     "equal": float(lds_of([sum(p[rest] for p in preds) / len(preds)], truth[rest])[0]),
                     "best single": float(single[int(np.nanargmax(lds_of([p[fit] for p in preds], truth[fit])))]),
                     "oracle single": float(np.nanmax(single))})
    return rows
