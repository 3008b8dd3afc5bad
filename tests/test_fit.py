"""The one training engine (diffattr.fit): its steps are AdamW on the clipped gradient at the scheduled
learning rate, checked against a loop written out by hand; its log rows are window means; a fit killed
mid-way and rerun from its state ends in the same bytes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffattr.fit import FitSettings, discard_state, fit, save_state, update

X = torch.from_numpy(np.random.default_rng(0).standard_normal((32, 3)).astype(np.float32))
Y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.3


def params() -> dict[str, torch.nn.Parameter]:
    """A linear model's weights, the same at every call."""
    return {"w": torch.nn.Parameter(torch.zeros(3)), "b": torch.nn.Parameter(torch.zeros(()))}


def draws(step: int) -> np.ndarray:
    """Rows of step ``step``: 8 of the 32, a pure function of the step."""
    return np.random.default_rng([5, step]).choice(32, size=8, replace=False)


def make_loss(p: dict[str, torch.nn.Parameter], calls: list[int] | None = None):
    def loss(rows: np.ndarray) -> torch.Tensor:
        if calls is not None:
            calls.append(1)
        idx = torch.from_numpy(rows)
        return ((X[idx] @ p["w"] + p["b"] - Y[idx]) ** 2).mean()
    return loss


SETTINGS = FitSettings(steps=10, lr=0.1, warmup_fraction=0.2, weight_decay=0.05, adam_betas=(0.8, 0.95),
                       adam_eps=1e-6, grad_clip=0.5, resume_every=3, log_every=4)


def by_hand(settings: FitSettings) -> tuple[dict[str, torch.Tensor], list[float], list[float]]:
    """AdamW written out (decoupled decay, bias-corrected moments), the cosine warm-up schedule and the
    global-norm clip, with no torch optimiser: final weights, per-step losses and learning rates."""
    w, b = torch.zeros(3, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    m = [torch.zeros_like(w), torch.zeros_like(b)]
    v = [torch.zeros_like(w), torch.zeros_like(b)]
    b1, b2 = settings.adam_betas
    losses, lrs = [], []
    warmup = round(settings.warmup_fraction * settings.steps) if settings.warmup_fraction is not None else 0
    for s in range(settings.steps):
        if settings.warmup_fraction is None:
            lr = settings.lr
        elif s < warmup:
            lr = settings.lr * (s + 1) / warmup
        else:
            lr = settings.lr * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (settings.steps - warmup)))
        idx = torch.from_numpy(draws(s))
        x, y = X[idx].double(), Y[idx].double()
        r = x @ w + b - y
        losses.append(float((r ** 2).mean()))
        grads = [2 * x.T @ r / len(r), 2 * r.mean()]
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
        if settings.grad_clip is not None and norm > settings.grad_clip:
            grads = [g * settings.grad_clip / (norm + 1e-6) for g in grads]
        new = []
        for i, (p, g) in enumerate(zip((w, b), grads)):
            p = p * (1 - lr * settings.weight_decay)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            mhat, vhat = m[i] / (1 - b1 ** (s + 1)), v[i] / (1 - b2 ** (s + 1))
            new.append(p - lr * mhat / (vhat.sqrt() + settings.adam_eps))
        w, b = new
        lrs.append(lr)
    return {"w": w, "b": b}, losses, lrs


@pytest.mark.parametrize("settings", [SETTINGS, FitSettings(steps=7, lr=0.05, warmup_fraction=None, weight_decay=1e-6,
                                                            adam_betas=(0.95, 0.999), adam_eps=1e-8, grad_clip=None,
                                                            resume_every=100, log_every=3)])
def test_fit_is_adamw_on_the_clipped_gradient_at_the_scheduled_rate(settings, tmp_path):
    p = params()
    rows = fit(make_loss(p), p, draws, settings, tmp_path / "r" / "state.safetensors", "k")
    weights, losses, lrs = by_hand(settings)
    for name in p:
        torch.testing.assert_close(p[name].detach().double(), weights[name], rtol=1e-4, atol=1e-5)
    ends = sorted({*range(settings.log_every, settings.steps + 1, settings.log_every), settings.steps})
    starts = [0, *ends[:-1]]
    assert [r["step"] for r in rows] == ends
    np.testing.assert_allclose([r["loss"] for r in rows], [np.mean(losses[a:e]) for a, e in zip(starts, ends)],
                               rtol=1e-4)
    np.testing.assert_allclose([r["lr"] for r in rows], [lrs[e - 1] for e in ends], rtol=1e-12)


def test_update_clips_the_global_norm():
    a, b = torch.nn.Parameter(torch.tensor([3.0])), torch.nn.Parameter(torch.tensor([4.0]))
    opt = torch.optim.SGD([a, b], lr=1.0)
    value = update(opt, 0.5 * (a ** 2 + b ** 2).sum(), 0.1, 1.0)  # gradient (3, 4): norm 5, clipped to 1
    assert value == 12.5
    torch.testing.assert_close(torch.cat([a.detach(), b.detach()]), torch.tensor([3 - 0.1 * 0.6, 4 - 0.1 * 0.8]),
                               rtol=0, atol=1e-6)
    assert opt.param_groups[0]["lr"] == 0.1


def test_a_killed_fit_resumes_to_the_same_bytes(tmp_path):
    straight = params()
    rows = fit(make_loss(straight), straight, draws, SETTINGS, tmp_path / "a" / "state.safetensors", "k")

    state = tmp_path / "b" / "state.safetensors"
    p, calls = params(), []
    inner = make_loss(p, calls)

    def dies_at_step_8(rows_: np.ndarray) -> torch.Tensor:
        if len(calls) == 8:
            raise KeyboardInterrupt
        return inner(rows_)

    with pytest.raises(KeyboardInterrupt):
        fit(dies_at_step_8, p, draws, SETTINGS, state, "k")
    assert state.exists()  # saved after steps 3 and 6

    resumed, calls = params(), []
    again = fit(make_loss(resumed, calls), resumed, draws, SETTINGS, state, "k")
    assert len(calls) == 4  # steps 7–10: it resumed from step 6
    assert again == rows  # the log rows before step 6 came back with the state
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    discard_state(state)
    assert not state.exists()


def test_a_state_for_another_key_is_ignored_and_save_final_keeps_the_end(tmp_path):
    state = tmp_path / "state.safetensors"
    other = params()
    with torch.no_grad():
        other["w"].fill_(7.0)
    save_state(state, other, torch.optim.AdamW(list(other.values())), 6, "another config", [], 0.0)
    p, calls = params(), []
    final = FitSettings(**{**SETTINGS.__dict__, "save_final": True})
    rows = fit(make_loss(p, calls), p, draws, final, state, "k")
    assert len(calls) == 10  # the foreign state was not used: all ten steps ran
    reference = params()
    fit(make_loss(reference), reference, draws, SETTINGS, tmp_path / "ref" / "state.safetensors", "k")
    assert all(torch.equal(p[n], reference[n]) for n in p)

    again, calls = params(), []  # the state after the last step: a rerun does no step and returns the same
    assert fit(make_loss(again, calls), again, draws, final, state, "k") == rows
    assert calls == [] and all(torch.equal(again[n], p[n]) for n in p)
