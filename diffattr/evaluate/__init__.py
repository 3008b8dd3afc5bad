"""Evaluation of attribution scores: LDS (docs/methods.md §4.4), later counterfactual (§4.5)."""
