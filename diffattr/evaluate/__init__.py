"""Evaluation of attribution scores: LDS (METHODS.md §4.4), later counterfactual (§4.5)."""
