"""Influence functions (docs/methods.md §2.8) against independent computations: closed-form ridge influence
and exact leave-one-out on linear regression, torch.autograd Hessians of a small MLP, plain-autograd
double backward and featurize's per-sample gradients on a UNet; exact = CG on a micro UNet;
determinism and batch-size independence on the tiny UNet; the exact solver's size limit."""

import logging

import numpy as np
import pytest
import torch

from conftest import SCHEDULER, TINY_UNET
from diffattr.featurize import per_sample_gradients as featurize_gradients
from diffattr.models.vmap import prepare_for_vmap
from diffattr.methods.influence import (
    InfluenceConfig,
    diffusion_objective,
    hessian,
    hessian_vector_products,
    influence_from_objectives,
    influence_scores,
    per_sample_gradients,
    tensor_objective,
)
from diffattr.models.ddpm import add_noise, build_scheduler, build_unet

torch.set_num_threads(1)

MICRO_UNET = dict(TINY_UNET, sample_size=4, block_out_channels=[2, 2], norm_num_groups=1, attention_head_dim=2)
"""1259 parameters: small enough to materialise the Hessian in a test."""


def squared_loss(p, batch):
    x, y = batch
    return ((x @ p["weight"].T + p["bias"]).squeeze(-1) - y) ** 2


def as_params(module):
    return {n: q.detach().clone() for n, q in module.named_parameters()}


# ---------------------------------------------------------------------------------------------
# (1) linear regression: closed-form ridge influence and leave-one-out


@pytest.fixture(scope="module")
def ridge():
    """Least squares R(θ) = (1/N) Σ (aᵢᵀθ − yᵢ)², a = [x, 1], at the ridge minimiser of R + λ/2‖θ‖²."""
    rng = np.random.default_rng(0)
    n, d, lam = 100, 3, 1e-2
    x, w = rng.standard_normal((n, d)), rng.standard_normal(d)
    y = x @ w + 0.3 * rng.standard_normal(n)
    xq = rng.standard_normal((6, d))
    yq = xq @ w + 0.3 * rng.standard_normal(6)
    a, aq = np.hstack([x, np.ones((n, 1))]), np.hstack([xq, np.ones((6, 1))])
    h = 2 / n * a.T @ a
    theta = np.linalg.solve(h + lam * np.eye(d + 1), 2 / n * a.T @ y)
    grad_train = 2 * (a @ theta - y)[:, None] * a
    grad_query = 2 * (aq @ theta - yq)[:, None] * aq
    tau = grad_query @ np.linalg.solve(h + lam * np.eye(d + 1), grad_train.T)
    linear = torch.nn.Linear(d, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(theta[None, :d]))
        linear.bias.copy_(torch.tensor(theta[d:]))
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return {"lam": lam, "a": a, "aq": aq, "y": y, "yq": yq, "theta": theta, "tau": tau, "params": as_params(linear),
            "train": tensor_objective(squared_loss, f32(x), f32(y)),
            "query": tensor_objective(squared_loss, f32(xq), f32(yq))}


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_linear_regression_equals_closed_form_ridge_influence(ridge, solver):
    cfg = InfluenceConfig(solver=solver, damping=ridge["lam"], cg_tolerance=1e-7, hessian_batch_size=32)
    tau = influence_from_objectives(ridge["params"], ridge["train"], {"q": ridge["query"]}, cfg)["q"]
    assert tau.dtype == np.float32 and tau.shape == (6, 100)
    np.testing.assert_allclose(tau, ridge["tau"], rtol=1e-4, atol=1e-5 * np.abs(ridge["tau"]).max())


def test_first_order_prediction_matches_leave_one_out(ridge):
    """Dropping z's term (others keep weight 1/N) changes the test loss by ≈ τ(x, z)/N; τ > 0 ⇒ z helped."""
    a, y, aq, yq, lam, theta = (ridge[k] for k in ("a", "y", "aq", "yq", "lam", "theta"))
    n = len(y)
    cfg = InfluenceConfig(solver="cg", damping=lam, cg_tolerance=1e-7, hessian_batch_size=100)
    predicted = influence_from_objectives(ridge["params"], ridge["train"], {"q": ridge["query"]}, cfg)["q"] / n
    actual = np.empty_like(predicted, dtype=np.float64)
    for z in range(n):
        keep = np.arange(n) != z
        theta_z = np.linalg.solve(2 / n * a[keep].T @ a[keep] + lam * np.eye(a.shape[1]), 2 / n * a[keep].T @ y[keep])
        actual[:, z] = (aq @ theta_z - yq) ** 2 - (aq @ theta - yq) ** 2
    assert np.linalg.norm(predicted - actual) / np.linalg.norm(actual) < 0.15
    assert np.corrcoef(predicted.ravel(), actual.ravel())[0, 1] > 0.99
    big = np.abs(actual) > 0.1 * np.abs(actual).max()
    assert (np.sign(predicted[big]) == np.sign(actual[big])).all()


# ---------------------------------------------------------------------------------------------
# (2) CG and LiSSA converge to exact on a small MLP, Hessian by torch.autograd.functional


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    x, xq = torch.randn(30, 3), torch.randn(4, 3)
    y, yq = torch.sin(x.sum(1)), torch.sin(xq.sum(1))

    def loss(p, batch):
        inputs, target = batch
        out = torch.func.functional_call(net, p, (inputs,)).squeeze(-1)
        return (out - target) ** 2

    params = as_params(net)
    names, shapes = list(params), [q.shape for q in params.values()]
    flat0 = torch.cat([q.reshape(-1) for q in params.values()]).double()

    def unflat(v):
        return dict(zip(names, [c.reshape(s) for c, s in zip(torch.split(v, [int(np.prod(s)) for s in shapes]), shapes)]))

    def risk(v):  # R(θ) in float64, an independent path to H
        return loss(unflat(v), (x.double(), y.double())).mean()

    net.double()
    h = torch.autograd.functional.hessian(risk, flat0)

    def sample_gradient(inputs, target):
        one = (inputs[None].double(), target[None].double())
        return torch.autograd.functional.jacobian(lambda v: loss(unflat(v), one)[0], flat0)

    gq = torch.stack([sample_gradient(xq[i], yq[i]) for i in range(4)])
    gz = torch.stack([sample_gradient(x[i], y[i]) for i in range(30)])
    net.float()
    eig = torch.linalg.eigvalsh(h)
    lam = float(max(0.0, -eig.min())) + 0.1
    tau = (gq @ torch.linalg.solve(h + lam * torch.eye(len(h), dtype=h.dtype), gz.T)).numpy()
    return {"params": params, "train": tensor_objective(loss, x, y), "query": tensor_objective(loss, xq, yq),
            "lam": lam, "tau": tau, "top": float(eig.abs().max()), "h": h}


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_hessian_equals_autograd_functional_hessian(mlp):
    h = hessian(mlp["params"], mlp["train"], batch_size=7)
    torch.testing.assert_close(h, mlp["h"], rtol=1e-4, atol=1e-5)


def test_cg_and_lissa_converge_to_exact_on_small_mlp(mlp, caplog):
    def run(**kw):
        cfg = InfluenceConfig(**{"damping": mlp["lam"], "hessian_batch_size": 30, **kw})
        return influence_from_objectives(mlp["params"], mlp["train"], {"q": mlp["query"]}, cfg)["q"]

    exact = run(solver="exact")
    assert rel_err(exact, mlp["tau"]) < 1e-4
    with caplog.at_level(logging.INFO, logger="diffattr.methods.influence"):
        cg = run(solver="cg", cg_tolerance=1e-7)
    assert rel_err(cg, exact) < 1e-4
    assert any("CG converged after" in r.getMessage() for r in caplog.records)
    # a truncated CG is further off than a converged one: it really iterates
    assert rel_err(run(solver="cg", cg_iterations=2), exact) > 1e-3
    # full-batch LiSSA is a Richardson iteration: converges to exact
    scale = 1.2 * (mlp["top"] + mlp["lam"])
    lissa_full = run(solver="lissa", lissa_batch_size=None, lissa_depth=400, lissa_scale=scale)
    assert rel_err(lissa_full, exact) < 1e-3
    # stochastic LiSSA (minibatches of 10, §2.8's recursion, repeats averaged): close, not exact
    lissa_sgd = run(solver="lissa", lissa_batch_size=10, lissa_depth=150, lissa_repeats=8, lissa_scale=2 * scale,
                    hessian_batch_size=10)
    assert rel_err(lissa_sgd, exact) < 0.15
    assert np.corrcoef(lissa_sgd.ravel(), exact.ravel())[0, 1] > 0.99


def test_lissa_divergence_is_reported(mlp):
    cfg = InfluenceConfig(solver="lissa", damping=mlp["lam"], lissa_batch_size=None, lissa_depth=2000,
                          lissa_scale=0.05 * mlp["top"], hessian_batch_size=30)
    with pytest.raises(FloatingPointError, match="LiSSA diverged"):
        influence_from_objectives(mlp["params"], mlp["train"], {"q": mlp["query"]}, cfg)


# ---------------------------------------------------------------------------------------------
# (3) UNets


def unet_setup(config, n_train, n_query, seed=0):
    torch.manual_seed(seed)
    model = prepare_for_vmap(build_unet(config))
    rng = np.random.default_rng(seed)
    s = config["sample_size"]
    train = rng.uniform(-1, 1, (n_train, 1, s, s)).astype(np.float32)
    queries = {"val": rng.uniform(-1, 1, (n_query, 1, s, s)).astype(np.float32)}
    return model, build_scheduler(SCHEDULER), train, queries


def test_unet_hvp_and_gradients_equal_plain_autograd():
    """R(θ) = mean over images and their (t, ε) draws of L_Simple; ∇ℓ_z equals featurize's gradient."""
    model, sched, train, _ = unet_setup(MICRO_UNET, 3, 1)
    cfg = InfluenceConfig(timesteps=2)
    objective = diffusion_objective(model, sched, train, "train", cfg)
    params = as_params(model)
    x0, t, eps = objective.fetch(np.arange(3))
    v = torch.randn(2, sum(q.numel() for q in params.values()))
    hv = hessian_vector_products(params, objective, v, batch_size=2, vector_batch=1)
    abar = sched.alphas_cumprod.float()
    xt = add_noise(x0.repeat_interleave(2, 0), eps.reshape(6, 1, 4, 4), t.reshape(-1), abar)
    risk = ((model(xt, t.reshape(-1)).sample - eps.reshape(6, 1, 4, 4)) ** 2).mean()  # mean over 3·2 draws and pixels
    g = torch.cat([q.reshape(-1) for q in torch.autograd.grad(risk, list(model.parameters()), create_graph=True)])
    for k in range(2):
        second = torch.autograd.grad(g @ v[k], list(model.parameters()), retain_graph=True)
        expected = torch.cat([q.reshape(-1) for q in second])
        torch.testing.assert_close(hv[k], expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    ours = torch.cat([g for _, g in per_sample_gradients(params, objective, None, batch_size=2)])
    theirs = featurize_gradients(model, x0, t, eps, "loss", abar, sched.betas.float())
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_exact_and_cg_agree_on_micro_unet():
    model, sched, train, queries = unet_setup(MICRO_UNET, 4, 3)
    base = dict(timesteps=2, output="square")
    params = as_params(model)
    h = hessian(params, diffusion_objective(model, sched, train, "train", InfluenceConfig(**base)))
    eig = torch.linalg.eigvalsh(h)  # random init: indefinite; damp into the positive-definite range
    lam = float(-eig.min()) + 0.05 * float(eig.max())
    exact = influence_scores(model, sched, train, queries, InfluenceConfig(solver="exact", damping=lam, **base))["val"]
    cg = influence_scores(model, sched, train, queries,
                          InfluenceConfig(solver="cg", damping=lam, cg_tolerance=1e-6, cg_iterations=200, **base))["val"]
    assert exact.shape == (3, 4)
    assert rel_err(cg, exact) < 1e-4
    renorm = influence_scores(model, sched, train, queries,
                              InfluenceConfig(solver="exact", damping=lam, renormalize=True, **base))["val"]
    objective = diffusion_objective(model, sched, train, "train", InfluenceConfig(**base))
    norms = torch.cat([g for _, g in per_sample_gradients(params, objective)]).norm(dim=1).numpy()
    np.testing.assert_allclose(renorm, exact / norms[None, :], rtol=1e-4)


def test_unet_scores_are_deterministic_and_independent_of_batch_size():
    model, sched, train, queries = unet_setup(TINY_UNET, 5, 2)
    queries["gen"] = queries["val"][:1] * 0.5
    base = dict(solver="cg", damping=1.0, timesteps=2, cg_iterations=4)
    def run(batch, vectors):
        cfg = InfluenceConfig(batch_size=batch, hessian_batch_size=batch, hvp_vectors=vectors, **base)
        return influence_scores(model, sched, train, queries, cfg)

    a, b, c = run(5, 3), run(5, 3), run(2, 1)
    assert set(a) == {"val", "gen"} and a["val"].shape == (2, 5) and a["gen"].shape == (1, 5)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        np.testing.assert_allclose(c[name], a[name], rtol=1e-3, atol=1e-4 * np.abs(a[name]).max())
        assert np.isfinite(a[name]).all()


# ---------------------------------------------------------------------------------------------
# (4) the exact solver's size limit; config


def test_exact_refuses_a_large_model():
    model, sched, train, queries = unet_setup(TINY_UNET, 2, 1)
    expected = r"limited to max_exact_params = 20000 parameters, but this model has 41609; use solver 'cg' or 'lissa'"
    with pytest.raises(ValueError, match=expected):
        influence_scores(model, sched, train, queries, InfluenceConfig(solver="exact"))


def test_config_from_dict_validates():
    cfg = InfluenceConfig.from_dict({"kind": "influence", "solver": "lissa", "lissa_depth": 50, "lissa_scale": None})
    assert cfg.solver == "lissa" and cfg.lissa_depth == 50 and cfg.damping == 1e-3
    with pytest.raises(ValueError, match="unknown influence settings"):
        InfluenceConfig.from_dict({"solver": "cg", "cg_iters": 3})
    with pytest.raises(ValueError, match="unknown influence solver"):
        InfluenceConfig(solver="newton")
    with pytest.raises(ValueError, match="unknown output function"):
        InfluenceConfig(output="nope")
